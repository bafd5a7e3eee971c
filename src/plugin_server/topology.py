"""The one place that decides, from the settings, where a worker's events come from and go to."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings
from plugin_server.ingestion.kafka_producer import KafkaProducer
from plugin_server.ingestion.person_outbox import PersonOutbox
from plugin_server.ingestion.persons import persons_of
from plugin_server.ingestion.teams import TeamManager
from plugin_server.plugins.meta.logs import BufferedLogWriter, PluginLogWriter
from plugin_server.sinks import EventSink, PersonSink
from plugin_server.sinks.kafka import KafkaEventSink, KafkaPersonSink
from plugin_server.sinks.kafka.current import CurrentFormat
from plugin_server.sinks.kafka.logs import KafkaLogEntryWriter
from plugin_server.sinks.kafka.original import OriginalFormat
from plugin_server.sinks.kafka.records import KafkaFormat
from plugin_server.sinks.postgres import PostgresEventSink, PostgresPersonSink
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


@dataclass(frozen=True)
class Sinks:
    """Where the pipeline stores a batch: its events, and the person, distinct-id and group rows."""

    events: EventSink
    persons: PersonSink
    # Where the person manager records the rows the person sink has not taken yet (a mirror only).
    outbox: PersonOutbox | None = None


@contextlib.asynccontextmanager
async def open_sinks(settings: Settings, pool: AsyncConnectionPool[Any]) -> AsyncIterator[Sinks]:
    """EVENT_STORE=postgres: events in PostHog's tables, persons already there (a no-op person sink).
    EVENT_STORE=clickhouse-kafka: both to ClickHouse's topics in CLICKHOUSE_KAFKA_FORMAT, over one producer
    (closed on the way out, after what is in flight is delivered), with a person outbox."""
    if settings.EVENT_STORE == "postgres":
        yield Sinks(PostgresEventSink(pool), PostgresPersonSink())
        return
    producer = KafkaProducer(settings)
    format = kafka_format(settings)
    try:
        yield Sinks(
            KafkaEventSink(producer, format, partial(persons_of, pool)),
            KafkaPersonSink(producer, format),
            PersonOutbox(),
        )
    finally:
        await producer.close()


def kafka_format(settings: Settings) -> KafkaFormat:
    if settings.CLICKHOUSE_KAFKA_FORMAT == "current":
        return CurrentFormat(settings.KAFKA_PREFIX)
    return OriginalFormat(settings.KAFKA_PREFIX)


def open_log_writer(settings: Settings, pool: AsyncConnectionPool[Any]) -> BufferedLogWriter:
    """Plugin logs go where events go: posthog_pluginlogentry, or the `plugin_log_entries` topic."""
    if settings.EVENT_STORE == "postgres":
        return PluginLogWriter(pool)
    return KafkaLogEntryWriter(KafkaProducer(settings), prefix=settings.KAFKA_PREFIX)
