"""Fixtures of the integration tests beyond tests/conftest.py's services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.plugins.host import PluginHost
from tests.plugin_hosts import running_plugin_host


@pytest.fixture
async def running_host(
    clean_db: psycopg.Connection[Any], pool: AsyncConnectionPool[Any], aredis: aioredis.Redis
) -> AsyncIterator[PluginHost]:
    """A worker's plugin machinery on a clean database (see tests/plugin_hosts.py)."""
    async with running_plugin_host(pool, aredis) as host:
        yield host
