"""The one place that decides, from the settings, where a worker's events come from and go to."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings
from plugin_server.ingestion.teams import TeamManager
from plugin_server.plugins.historical import PostgresStoredEvents, StoredEvents
from plugin_server.sinks import EventSink
from plugin_server.sinks.postgres import PostgresEventSink
from plugin_server.sources import Source
from plugin_server.sources.celery_redis import CelerySource

if TYPE_CHECKING:
    from plugin_server.sinks.clickhouse.client import AsyncClickHouse


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


@contextlib.asynccontextmanager
async def open_event_sink(settings: Settings, pool: AsyncConnectionPool[Any]) -> AsyncIterator[EventSink]:
    """Where the pipeline stores events, by EVENT_STORE: Postgres (PostHog's tables), or ClickHouse's
    tables directly."""
    if settings.EVENT_STORE == "postgres":
        yield PostgresEventSink(pool)
        return
    from plugin_server.sinks.clickhouse.events import ClickHouseEventSink

    async with _open_clickhouse(settings) as clickhouse:
        yield ClickHouseEventSink(clickhouse)


@contextlib.asynccontextmanager
async def open_stored_events(
    settings: Settings, pool: AsyncConnectionPool[Any]
) -> AsyncIterator[StoredEvents]:
    """Where the historical export reads stored events: Postgres, or ClickHouse when events are stored
    there (directly or through Kafka)."""
    if settings.EVENT_STORE == "postgres":
        yield PostgresStoredEvents(pool)
        return
    from plugin_server.sinks.clickhouse.reader import ClickHouseStoredEvents

    async with _open_clickhouse(settings) as clickhouse:
        yield ClickHouseStoredEvents(clickhouse)


@contextlib.asynccontextmanager
async def _open_clickhouse(settings: Settings) -> AsyncIterator[AsyncClickHouse]:
    """A client of CLICKHOUSE_DATABASE, its tables migrated first when AUTO_MIGRATE is on (not the
    Kafka tables, which `plugin-server migrate --clickhouse` creates)."""
    from plugin_server.sinks.clickhouse.client import AsyncClickHouse, open_client
    from plugin_server.sinks.clickhouse.migrate import open_migrated

    if settings.AUTO_MIGRATE:
        client, _ = await asyncio.to_thread(open_migrated, settings)
    else:
        client = await asyncio.to_thread(open_client, settings)
    clickhouse = AsyncClickHouse(client)
    try:
        yield clickhouse
    finally:
        await clickhouse.close()
