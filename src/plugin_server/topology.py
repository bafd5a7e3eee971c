"""The one place that decides, from the settings, where a worker's events come from and go to."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings
from plugin_server.ingestion.teams import TeamManager
from plugin_server.sinks import EventSink
from plugin_server.sinks.postgres import PostgresEventSink
from plugin_server.sources import Source
from plugin_server.sources.celery_redis import CelerySource


@contextlib.asynccontextmanager
async def open_sources(
    settings: Settings, redis: aioredis.Redis, consumer_id: str, teams: TeamManager
) -> AsyncIterator[list[Source]]:
    """The Celery list (PLUGINS_CELERY_QUEUE) always: PostHog sends plugin jobs there, and plugins'
    `posthog.capture` queues events there; with KAFKA_ENABLED also KAFKA_CONSUMPTION_TOPIC in
    KAFKA_CONSUMER_GROUP, where the capture API's events go."""
    sources: list[Source] = [
        CelerySource(
            redis,
            settings.PLUGINS_CELERY_QUEUE,
            consumer_id,
            visibility_timeout=settings.QUEUE_VISIBILITY_TIMEOUT,
        )
    ]
    if settings.KAFKA_ENABLED:
        from plugin_server.sources.kafka import KafkaSource

        sources.append(KafkaSource(settings, teams))
    try:
        yield sources
    finally:
        for source in sources:
            await source.close()


def open_event_sink(pool: AsyncConnectionPool[Any]) -> EventSink:
    """Where the pipeline stores events: Postgres (PostHog's tables) today; the ClickHouse sinks
    (through Kafka, or direct; issue 11) will be chosen here from the settings."""
    return PostgresEventSink(pool)
