"""The bounded Redis pool of the workers and the web process (db/redis.py), against a real Redis."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from plugin_server.db.redis import RESERVED_CONNECTIONS, open_redis

# The pools under test use a database of their own, so that their connections can be told apart from
# those of other tests still open in the session (CLIENT LIST shows each connection's database).
POOL_DB = 13


@pytest.fixture
def pool_url(redis_url: str) -> str:
    return urlunsplit(urlsplit(redis_url)._replace(path=f"/{POOL_DB}"))


def client_count(client: redis.Redis) -> int:
    return sum(1 for connection in client.client_list() if int(connection["db"]) == POOL_DB)


async def test_calls_past_the_pool_size_wait_for_a_connection_instead_of_failing(
    pool_url: str, redis_client: redis.Redis
) -> None:
    client = await open_redis(pool_url, min_size=0, max_size=1)
    try:
        # Three times as many blocking calls as connections: each waits its turn.
        calls = 3 * (1 + RESERVED_CONNECTIONS)
        results = await asyncio.gather(
            *(client.blpop(["empty-list-for-pool-test"], 0.1) for _ in range(calls))
        )
        assert results == [None] * calls
        assert client_count(redis_client) <= 1 + RESERVED_CONNECTIONS
    finally:
        await client.aclose()


async def test_the_minimum_of_connections_is_opened_at_once(pool_url: str, redis_client: redis.Redis) -> None:
    client = await open_redis(pool_url, min_size=4, max_size=5)
    try:
        assert client_count(redis_client) == 4
        assert await client.ping()
        assert client_count(redis_client) == 4  # the ping used one of them
    finally:
        await client.aclose()
    assert client_count(redis_client) == 0
