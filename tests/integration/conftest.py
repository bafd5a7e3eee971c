"""Fixtures of the integration tests beyond tests/conftest.py's services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from tests.plugin_hosts import RunningPlugins, running_plugins


@pytest.fixture
async def running(
    clean_db: psycopg.Connection[Any], pool: AsyncConnectionPool[Any], aredis: aioredis.Redis
) -> AsyncIterator[RunningPlugins]:
    """A worker's plugin machinery on a clean database (see tests/plugin_hosts.py)."""
    async with running_plugins(pool, aredis) as machinery:
        yield machinery
