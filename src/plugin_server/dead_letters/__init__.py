"""Messages that could not be ingested, kept for an operator to read and replay. The CLI
(`dead-letters list|replay`) and the operator API use only `open_dead_letters`.

- the Redis list `<PLUGINS_CELERY_QUEUE>:dead-letter`: what the Celery source dead-lettered;
- with KAFKA_ENABLED also the topic KAFKA_DEAD_LETTER_TOPIC: what the Kafka source dead-lettered.
"""

from __future__ import annotations

from typing import Any, Protocol

import redis.asyncio as aioredis

from plugin_server.config import Settings

# {reason, message (the original message, replayable), failed_at, consumer}
Letter = dict[str, Any]


class DeadLetterStore(Protocol):
    async def count(self) -> int:
        """How many dead letters are waiting (not replayed)."""
        ...

    async def newest(self, limit: int) -> list[Letter]:
        """The newest `limit` dead letters, newest first."""
        ...

    async def replay(self, limit: int | None = None) -> int:
        """Put up to `limit` (None: all) dead letters, oldest first, back on their source as the
        original messages; how many were replayed."""
        ...


class CombinedDeadLetters:
    """Several stores read as one: counts added, letters merged by time, replays in store order."""

    def __init__(self, stores: list[DeadLetterStore]) -> None:
        self._stores = stores

    async def count(self) -> int:
        return sum([await store.count() for store in self._stores])

    async def newest(self, limit: int) -> list[Letter]:
        letters = [letter for store in self._stores for letter in await store.newest(limit)]
        return sorted(letters, key=lambda letter: str(letter.get("failed_at") or ""), reverse=True)[:limit]

    async def replay(self, limit: int | None = None) -> int:
        replayed = 0
        for store in self._stores:
            left = None if limit is None else limit - replayed
            if left == 0:
                break
            replayed += await store.replay(left)
        return replayed


def open_dead_letters(settings: Settings, redis: aioredis.Redis) -> DeadLetterStore:
    from plugin_server.dead_letters.redis_list import RedisDeadLetters

    redis_list = RedisDeadLetters(redis, settings.PLUGINS_CELERY_QUEUE)
    if not settings.KAFKA_ENABLED:
        return redis_list
    from plugin_server.dead_letters.kafka_topic import KafkaDeadLetters

    return CombinedDeadLetters([redis_list, KafkaDeadLetters(settings)])
