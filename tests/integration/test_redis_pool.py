"""The bounded Redis pool of the workers and the web process (db/redis.py), against a real Redis."""

from __future__ import annotations

import asyncio

import redis

from plugin_server.db.redis import RESERVED_CONNECTIONS, open_redis


def client_count(client: redis.Redis) -> int:
    return len(client.client_list())


async def test_calls_past_the_pool_size_wait_for_a_connection_instead_of_failing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    client = await open_redis(redis_url, min_size=0, max_size=1)
    try:
        # Three times as many blocking calls as connections: each waits its turn.
        calls = 3 * (1 + RESERVED_CONNECTIONS)
        results = await asyncio.gather(
            *(client.blpop(["empty-list-for-pool-test"], 0.1) for _ in range(calls))
        )
        assert results == [None] * calls
        assert client_count(redis_client) <= 1 + (1 + RESERVED_CONNECTIONS)
    finally:
        await client.aclose()


async def test_the_minimum_of_connections_is_opened_at_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    before = client_count(redis_client)
    client = await open_redis(redis_url, min_size=4, max_size=5)
    try:
        assert client_count(redis_client) == before + 4
        assert await client.ping()
        assert client_count(redis_client) == before + 4  # the ping used one of them
    finally:
        await client.aclose()
    assert client_count(redis_client) == before
