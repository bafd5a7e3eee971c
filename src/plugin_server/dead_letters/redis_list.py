"""The dead letters of the Celery source: a Redis list next to the queue (see ingestion/redis_queue.py)."""

from __future__ import annotations

import redis.asyncio as aioredis

from plugin_server.dead_letters import Letter
from plugin_server.ingestion.redis_queue import dead_letter_count, read_dead_letters, replay_dead_letters


class RedisDeadLetters:
    def __init__(self, redis: aioredis.Redis, queue: str) -> None:
        self._redis = redis
        self._queue = queue

    async def count(self) -> int:
        return await dead_letter_count(self._redis, self._queue)

    async def newest(self, limit: int) -> list[Letter]:
        return await read_dead_letters(self._redis, self._queue, limit)

    async def replay(self, limit: int | None = None) -> int:
        return await replay_dead_letters(self._redis, self._queue, limit)
