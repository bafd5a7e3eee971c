"""The one place that decides, from the settings, where a worker's events come from and go to, and
builds the services its plugins share."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings
from plugin_server.ingestion.enqueue import open_enqueuer
from plugin_server.ingestion.kafka_producer import KafkaProducer
from plugin_server.ingestion.person_outbox import PersonOutbox
from plugin_server.ingestion.persons import persons_of
from plugin_server.ingestion.teams import TeamManager
from plugin_server.jobs.queue import JobQueue
from plugin_server.plugins.capabilities import CapabilityDiscovery, scheduled_tasks
from plugin_server.plugins.egress import plugin_connect_guard, plugin_http_client
from plugin_server.plugins.historical import PostgresStoredEvents, StoredEvents
from plugin_server.plugins.instance import RuntimeServices
from plugin_server.plugins.instances import InstanceFactory, VMFactory
from plugin_server.plugins.job_runner import PluginJobRunner
from plugin_server.plugins.meta.build import MetaFactory
from plugin_server.plugins.meta.logs import BufferedLogWriter, PluginLogWriter
from plugin_server.plugins.meta.posthog import PersonalApiKeys, origin
from plugin_server.plugins.metrics_report import PluginMetricsReporter
from plugin_server.plugins.registry import PluginRegistry
from plugin_server.plugins.services import PluginServices, WorkerPlugins
from plugin_server.plugins.tracking import CallTracker, HungMarks
from plugin_server.reads import Reads
from plugin_server.reads.postgres import postgres_reads
from plugin_server.services.geoip import GeoIP
from plugin_server.sinks import EventSink, PersonSink
from plugin_server.sinks.kafka import KafkaEventSink, KafkaPersonSink, RecordSender
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
async def open_producer(
    settings: Settings, shared: KafkaProducer | None = None
) -> AsyncIterator[KafkaProducer | None]:
    """A worker's one Kafka producer, for its ClickHouse records and plugin logs (clickhouse-kafka) and
    the events its plugins capture (KAFKA_ENABLED): `shared` when given (its opener closes it), else one
    of its own when the settings need one (None otherwise), closed on the way out once what is in flight
    is delivered."""
    if shared is not None or not (settings.KAFKA_ENABLED or settings.EVENT_STORE == "clickhouse-kafka"):
        yield shared
        return
    producer = KafkaProducer(settings)
    try:
        yield producer
    finally:
        await producer.close()


@contextlib.asynccontextmanager
async def open_sinks(
    settings: Settings, pool: AsyncConnectionPool[Any], producer: KafkaProducer | None = None
) -> AsyncIterator[Sinks]:
    """By EVENT_STORE. postgres: events in PostHog's tables, persons already there (a no-op person sink).
    clickhouse-kafka: both to ClickHouse's topics in CLICKHOUSE_KAFKA_FORMAT, over `producer` (the
    worker's: open_producer) or one of their own. clickhouse-direct: the same records inserted straight
    into ClickHouse's tables. Both mirrors keep a person outbox."""
    if settings.EVENT_STORE == "postgres":
        yield Sinks(PostgresEventSink(pool), PostgresPersonSink())
        return
    if settings.EVENT_STORE == "clickhouse-direct":
        from plugin_server.reads.connection import ClickHouseConnection
        from plugin_server.sinks.clickhouse.topics import ClickHouseTopicWriter

        connection = ClickHouseConnection.for_writing(settings)
        try:
            writer = ClickHouseTopicWriter.for_settings(await connection.open(), settings)
            try:
                yield _record_sinks(writer, settings, pool)
            finally:
                await writer.close()
        finally:
            await connection.close()
        return
    async with open_producer(settings, producer) as kafka:
        assert kafka is not None  # clickhouse-kafka needs one
        yield _record_sinks(kafka, settings, pool)


def _record_sinks(sender: RecordSender, settings: Settings, pool: AsyncConnectionPool[Any]) -> Sinks:
    """Events, persons, distinct ids and groups as records of CLICKHOUSE_KAFKA_FORMAT, through `sender`,
    with an outbox for the person rows a crash could leave unsent."""
    format = kafka_format(settings)
    return Sinks(
        KafkaEventSink(sender, format, partial(persons_of, pool)),
        KafkaPersonSink(sender, format),
        PersonOutbox(),
    )


def kafka_format(settings: Settings) -> KafkaFormat:
    if settings.CLICKHOUSE_KAFKA_FORMAT == "current":
        return CurrentFormat(settings.KAFKA_PREFIX)
    return OriginalFormat(settings.KAFKA_PREFIX)


def open_log_writer(
    settings: Settings, pool: AsyncConnectionPool[Any], producer: KafkaProducer | None = None
) -> BufferedLogWriter:
    """Plugin logs go to posthog_pluginlogentry, or with EVENT_STORE=clickhouse-kafka to the
    `plugin_log_entries` topic, over `producer` (closed by its owner, after the writer)."""
    if settings.EVENT_STORE != "clickhouse-kafka":
        return PluginLogWriter(pool)
    if producer is None:
        raise ValueError("EVENT_STORE=clickhouse-kafka writes plugin logs over a Kafka producer")
    return KafkaLogEntryWriter(producer, prefix=settings.KAFKA_PREFIX)


@contextlib.asynccontextmanager
async def open_plugin_services(
    settings: Settings,
    pool: AsyncConnectionPool[Any],
    redis: aioredis.Redis,
    *,
    geoip: GeoIP,
    tracker: CallTracker,
    producer: KafkaProducer | None = None,
) -> AsyncIterator[PluginServices]:
    """The services of a worker's plugins, with their own HTTP clients, log writer and enqueuer; on
    exit their logs are flushed and the enqueuer closed. Logs and captured events that go to Kafka go
    over `producer` (the worker's: open_producer), or one of their own.

    Plugin HTTP goes only where the egress policy allows (PLUGIN_HTTP_*); posthog.api's client also
    reaches the configured PostHog host wherever it is (the operator chose it)."""
    posthog_url = httpx.URL(settings.POSTHOG_API_HOST)
    posthog_origin = (posthog_url.raw_host.decode("ascii"), origin(posthog_url)[2])  # as connections name it
    async with (
        plugin_http_client(settings) as http,
        plugin_http_client(settings, trusted=[posthog_origin]) as posthog_http,
        open_stored_events(settings, pool) as stored_events,
        open_producer(settings, producer) as kafka,
    ):
        logs = open_log_writer(settings, pool, kafka)
        enqueuer = open_enqueuer(settings, redis, kafka)  # posthog.capture and plugin metrics events
        try:
            yield PluginServices(
                pool=pool,
                redis=redis,
                http=http,
                posthog_http=posthog_http,
                connect_guard=plugin_connect_guard(settings),
                logs=logs,
                jobs=JobQueue(pool, lease_seconds=settings.JOB_LEASE_SECONDS),
                geoip=geoip,
                teams=TeamManager(pool),
                tracker=tracker,
                hung=HungMarks(redis),
                enqueuer=enqueuer,
                api_keys=PersonalApiKeys(pool),
                stored_events=stored_events,
            )
        finally:
            await logs.close()
            await enqueuer.close()


@contextlib.asynccontextmanager
async def open_plugins(settings: Settings, services: PluginServices) -> AsyncIterator[WorkerPlugins]:
    """A worker's plugin machinery over `services`; on exit its plugins are torn down."""
    meta = MetaFactory(services, posthog_host=settings.POSTHOG_API_HOST)
    runtimes = RuntimeServices(settings, services.http, services.connect_guard, services.tracker)
    create = InstanceFactory(
        settings.BASE_DIR, meta, runtimes, services.pool, services.stored_events, services.jobs
    )
    registry = PluginRegistry(
        services.pool,
        VMFactory(services.pool, services.logs, services.hung, create),
        idle_unload_seconds=settings.PLUGIN_IDLE_UNLOAD_SECONDS,
        prepare_code=create.prepare,
    )
    try:
        yield WorkerPlugins(
            registry=registry,
            job_runner=PluginJobRunner(registry, services.hung),
            metrics=PluginMetricsReporter(registry, services.enqueuer),
            capabilities=CapabilityDiscovery(registry),
            scheduled_tasks=partial(scheduled_tasks, services.pool),
        )
    finally:
        await registry.close()


@contextlib.asynccontextmanager
async def open_stored_events(
    settings: Settings, pool: AsyncConnectionPool[Any]
) -> AsyncIterator[StoredEvents]:
    """Where the historical export reads stored events: Postgres, or ClickHouse when events are stored
    there (directly or through Kafka; connected at the first read)."""
    if settings.EVENT_STORE == "postgres":
        yield PostgresStoredEvents(pool)
        return
    from plugin_server.sinks.clickhouse.client import open_client
    from plugin_server.sinks.clickhouse.reader import ClickHouseStoredEvents

    reader = ClickHouseStoredEvents(partial(open_client, settings))
    try:
        yield reader
    finally:
        await reader.close()


@contextlib.asynccontextmanager
async def open_reads(settings: Settings, database_url: str) -> AsyncIterator[Reads]:
    """Where the console, the operator API and the CLI read events and plugin logs back: where the
    workers store them. Events: Postgres, or ClickHouse with either ClickHouse store (with
    clickhouse-kafka, once ClickHouse's Kafka tables consumed them). Plugin logs: ClickHouse with
    clickhouse-kafka (open_log_writer sends them there), else Postgres."""
    postgres = postgres_reads(database_url)
    if settings.EVENT_STORE == "postgres":
        yield postgres
        return
    from plugin_server.reads.clickhouse import ClickHouseReads
    from plugin_server.reads.connection import ClickHouseConnection

    clickhouse = ClickHouseConnection.for_settings(settings)
    reads = ClickHouseReads(clickhouse)
    try:
        yield Reads(
            events=reads,
            logs=reads if settings.EVENT_STORE == "clickhouse-kafka" else postgres.logs,
            probe=clickhouse.problem,
        )
    finally:
        await clickhouse.close()
