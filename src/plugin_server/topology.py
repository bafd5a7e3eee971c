"""The one place that decides, from the settings, where a worker's events come from."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from plugin_server.config import Settings
from plugin_server.ingestion.teams import TeamManager
from plugin_server.sources import Source
from plugin_server.sources.celery_redis import CelerySource


@contextlib.asynccontextmanager
async def open_source(
    settings: Settings, redis: aioredis.Redis, consumer_id: str, teams: TeamManager
) -> AsyncIterator[Source]:
    """KAFKA_CONSUMPTION_TOPIC in KAFKA_CONSUMER_GROUP_ID with KAFKA_ENABLED, else the Celery list."""
    source: Source
    if settings.KAFKA_ENABLED:
        from plugin_server.sources.kafka import KafkaSource

        source = KafkaSource(settings, teams)
    else:
        source = CelerySource(
            redis,
            settings.PLUGINS_CELERY_QUEUE,
            consumer_id,
            visibility_timeout=settings.QUEUE_VISIBILITY_TIMEOUT,
        )
    try:
        yield source
    finally:
        await source.close()
