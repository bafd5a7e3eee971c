"""The plugin job runner's own Redis failure puts a job back in line (TryAgainLater) rather than
failing it: the hung-call marks read from a Redis that is not there (a real refused connection)."""

from __future__ import annotations

import socket
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from plugin_server.jobs.queue import TryAgainLater
from plugin_server.plugins.job_runner import PluginJobRunner
from plugin_server.plugins.registry import PluginRegistry
from plugin_server.plugins.tracking import HungMarks


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # nothing listens on it once the probe is closed


async def test_redis_unreachable_for_the_hung_marks_means_try_again_later() -> None:
    redis = aioredis.Redis(port=closed_port(), socket_connect_timeout=1)
    runner = PluginJobRunner(cast(PluginRegistry, None), HungMarks(redis))
    try:
        with pytest.raises(TryAgainLater) as raised:
            await runner._was_hung(7, "job:hello")
    finally:
        await redis.aclose()
    cause: Any = raised.value.__cause__
    assert isinstance(cause, aioredis.ConnectionError)
