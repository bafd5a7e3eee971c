"""The workers' and web process's Redis client: a bounded pool that makes callers wait, not fail.

redis-py's default asyncio pool raises "Too many connections" past its maximum, which under load (many
plugin cache calls at once, batches in flight) would fail calls that only needed to wait. A redis-py
connection runs one command at a time (unlike the original's ioredis clients, which pipeline), so the
pool holds REDIS_POOL_MAX_SIZE connections for commands plus a reserve for the ones that hold a
connection for long: the queue's blocking claim, the reload listener, heartbeats.
"""

from __future__ import annotations

import redis.asyncio as aioredis

RESERVED_CONNECTIONS = 8
# A command waits this long for a free connection before it fails (with a ConnectionError, which the
# worker treats as Redis being unavailable and retries).
POOL_WAIT_SECONDS = 20.0


async def open_redis(url: str, *, min_size: int, max_size: int) -> aioredis.Redis:
    """A client whose pool opened `min_size` connections already (REDIS_POOL_MIN_SIZE)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_size + RESERVED_CONNECTIONS, timeout=POOL_WAIT_SECONDS
    )
    client = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
    try:
        opened = [await pool.get_connection() for _ in range(min_size)]  # type: ignore[no-untyped-call]
        for connection in opened:
            await pool.release(connection)
    except BaseException:
        await client.aclose()
        raise
    return client
