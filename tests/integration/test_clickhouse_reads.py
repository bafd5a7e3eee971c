"""The readers of `topology.open_reads` on chDB: the same events and plugin log entries, stored in Postgres
and in ClickHouse, read back alike. Events reach ClickHouse through the direct writer (each batch twice,
as a redelivery would: read once), log entries through the Kafka table's view, from the very records the
Kafka log writer produces (as ClickHouse's Kafka engine would insert them)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from clickhouse_connect.driver.client import Client
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings, load_settings
from plugin_server.db.teams import CreatedTeam, create_organization_and_team
from plugin_server.ingestion.persons import Key, PersonRow
from plugin_server.ingestion.types import PreparedEvent
from plugin_server.plugins.admin import AdminError
from plugin_server.plugins.meta.logs import LogSource, LogType, PluginLogEntry, PluginLogWriter
from plugin_server.reads import LogQuery, ReadFailed, Reads
from plugin_server.sinks import NO_PERSONS, EventSink
from plugin_server.sinks.clickhouse.client import AsyncClickHouse
from plugin_server.sinks.clickhouse.topics import ClickHouseTopicWriter
from plugin_server.sinks.kafka.records import log_entry_record
from plugin_server.topology import open_log_writer, open_reads, open_sinks
from tests.integration.test_pipeline import message, pipeline
from tests.integration.test_plugin_logs import insert_plugin_config

Db = psycopg.Connection[Any]
START = datetime(2021, 11, 28, 10, 0, tzinfo=UTC)


@dataclass
class BothStores:
    """Stores each batch in Postgres, and twice in ClickHouse."""

    postgres: EventSink
    clickhouse: EventSink

    async def write(
        self, events: Sequence[PreparedEvent], persons: Mapping[Key, PersonRow] = NO_PERSONS
    ) -> None:
        await self.postgres.write(events, persons)
        await self.clickhouse.write(events, persons)
        await self.clickhouse.write(events, persons)


@pytest.fixture
async def reads(
    clickhouse: Client, clickhouse_settings: Settings, database_url: str
) -> AsyncIterator[tuple[Reads, Reads]]:
    """(Postgres' readers, ClickHouse's readers with EVENT_STORE=clickhouse-kafka)."""
    kafka_mode = clickhouse_settings.model_copy(update={"EVENT_STORE": "clickhouse-kafka"})
    async with (
        open_reads(load_settings({}), database_url) as postgres,
        open_reads(kafka_mode, database_url) as in_clickhouse,
    ):
        yield postgres, in_clickhouse


async def store_events(
    pool: AsyncConnectionPool[Any], clickhouse_settings: Settings, messages: list[bytes]
) -> None:
    direct = clickhouse_settings.model_copy(update={"EVENT_STORE": "clickhouse-direct"})
    async with open_sinks(load_settings({}), pool) as postgres, open_sinks(direct, pool) as in_clickhouse:
        both = pipeline(pool)
        both.sink = BothStores(postgres.events, in_clickhouse.events)
        outcome = await both.run(messages)
    assert (outcome.stored, outcome.dead_letters) == (len(messages), [])


async def test_recent_events_read_alike_from_postgres_and_clickhouse(
    reads: tuple[Reads, Reads],
    pool: AsyncConnectionPool[Any],
    clickhouse_settings: Settings,
    team: CreatedTeam,
    clean_db: Db,
) -> None:
    other = create_organization_and_team(clean_db, team_id=3, team_name="other")
    sent = [("ann-1", 1), ("bob", 2), ("ann-2", 3), ("ann-1", 4)]
    messages = [
        message(
            team.team_id,
            distinct_id,
            {
                "event": f"e{minute}",
                "properties": {"n": minute, "nested": {"ö": [1, None]}},
                "timestamp": (START + timedelta(minutes=minute)).isoformat(),
            },
        )
        for distinct_id, minute in sent
    ]
    messages.append(message(other.team_id, "ann-1", {"event": "elsewhere", "timestamp": START.isoformat()}))
    now = datetime.now(UTC)
    for days in (2, 40, 400):  # ClickHouse looks back a day, a week, a month, a year, then ever
        moment = (now - timedelta(days=days)).isoformat()
        messages.append(message(team.team_id, "cy", {"event": f"{days} days ago", "timestamp": moment}))
    await store_events(pool, clickhouse_settings, messages)

    postgres, in_clickhouse = reads
    for distinct_id, limit, expected in [
        ("", 50, ["2 days ago", "40 days ago", "400 days ago", "e4", "e3", "e2", "e1"]),  # newest first,
        ("ann", 50, ["e4", "e3", "e1"]),  # one team's only, each event once
        ("cy", 1, ["2 days ago"]),
        ("cy", 2, ["2 days ago", "40 days ago"]),
        ("", 4, ["2 days ago", "40 days ago", "400 days ago", "e4"]),
        ("ann-1", 1, ["e4"]),
        ("a%", 50, []),  # a prefix, not a pattern
        ("", 0, []),
    ]:
        from_postgres = await postgres.events.recent_events(team.team_id, distinct_id, limit)
        from_clickhouse = await in_clickhouse.events.recent_events(team.team_id, distinct_id, limit)
        assert [event.event for event in from_clickhouse] == expected, distinct_id
        assert from_clickhouse == from_postgres
    [newest] = await in_clickhouse.events.recent_events(team.team_id, "ann", 1)
    assert newest.timestamp == START + timedelta(minutes=4)  # aware, to the microsecond
    assert newest.properties["nested"] == {"ö": [1, None]}
    assert uuid.UUID(newest.uuid or "")


def entry(
    config: tuple[int, int], team: CreatedTeam, second: int, kind: LogType, text: str
) -> PluginLogEntry:
    plugin_id, config_id = config
    return PluginLogEntry(
        id=str(uuid.uuid4()),
        team_id=team.team_id,
        plugin_id=plugin_id,
        plugin_config_id=config_id,
        timestamp=START + timedelta(seconds=second, milliseconds=second),  # ms: the topic's precision
        source=LogSource.CONSOLE,
        type=kind,
        message=text,
        instance_id=str(uuid.uuid4()),
    )


async def store_logs(
    pool: AsyncConnectionPool[Any], clickhouse: Client, settings: Settings, entries: list[PluginLogEntry]
) -> None:
    writer = PluginLogWriter(pool)
    for written in entries:
        writer.write(written)
    await writer.close()
    await feed_logs(clickhouse, settings, entries)


async def feed_logs(clickhouse: Client, settings: Settings, entries: list[PluginLogEntry]) -> None:
    """The `plugin_log_entries` records the Kafka log writer produces, into ClickHouse as its Kafka engine
    would (through the direct writer's transport and the Kafka table's view), each twice."""
    records = [log_entry_record(written, settings.KAFKA_PREFIX) for written in entries]
    writer = ClickHouseTopicWriter.for_settings(AsyncClickHouse(clickhouse), settings)
    await writer.send(records + records)


async def test_log_entries_read_alike_from_postgres_and_clickhouse(
    reads: tuple[Reads, Reads],
    pool: AsyncConnectionPool[Any],
    clickhouse: Client,
    clickhouse_settings: Settings,
    team: CreatedTeam,
    clean_db: Db,
) -> None:
    config = insert_plugin_config(clean_db, team)
    other_config = insert_plugin_config(clean_db, team, "another plugin")
    entries = [
        entry(config, team, 1, LogType.INFO, "Started"),
        entry(config, team, 2, LogType.ERROR, "Webhook failed: 100% broken"),
        entry(config, team, 3, LogType.LOG, "webhook sent"),
        entry(config, team, 4, LogType.WARN, "slow"),
        entry(other_config, team, 5, LogType.ERROR, "not this config's"),
    ]
    await store_logs(pool, clickhouse, clickhouse_settings, entries)
    config_id = config[1]
    first, second, third, fourth, _ = (written.id for written in entries)
    postgres, in_clickhouse = reads
    for query, expected in [
        (LogQuery(config_id), [first, second, third, fourth]),
        (LogQuery(config_id, limit=2), [third, fourth]),  # the newest, oldest first
        (LogQuery(config_id, after=second), [third, fourth]),
        (LogQuery(config_id, after=first, limit=1), [second]),
        (LogQuery(config_id, after=fourth), []),
        (LogQuery(config_id, after=str(uuid.uuid4())), []),  # an id not stored: nothing, not everything
        (LogQuery(config_id, types=["ERROR", "WARN"]), [second, fourth]),
        (LogQuery(config_id, text="WEBHOOK"), [second, third]),
        (LogQuery(config_id, text="0%"), [second]),  # % is literal
        (LogQuery(config_id, text="0_"), []),
    ]:
        from_postgres = await postgres.logs.log_entries(query)
        from_clickhouse = await in_clickhouse.logs.log_entries(query)
        assert [found.id for found in from_clickhouse] == expected, query
        assert from_clickhouse == from_postgres
    with pytest.raises(AdminError, match="not a log entry id"):
        await in_clickhouse.logs.log_entries(LogQuery(config_id, after="nope"))


async def test_with_the_direct_writer_plugin_logs_are_read_where_they_are_written(
    clickhouse: Client,
    clickhouse_settings: Settings,
    pool: AsyncConnectionPool[Any],
    database_url: str,
    team: CreatedTeam,
    clean_db: Db,
) -> None:
    """Postgres (open_log_writer keeps them there with clickhouse-direct), events from ClickHouse."""
    direct = clickhouse_settings.model_copy(update={"EVENT_STORE": "clickhouse-direct"})
    written = entry(insert_plugin_config(clean_db, team), team, 1, LogType.INFO, "hello")
    writer = open_log_writer(direct, pool)
    writer.write(written)
    await writer.close()
    await store_events(pool, clickhouse_settings, [message(team.team_id, "ann", {"event": "seen"})])
    clean_db.execute("TRUNCATE posthog_event CASCADE")  # so that only ClickHouse has it
    async with open_reads(direct, database_url) as reads:
        assert await reads.logs.log_entries(LogQuery(written.plugin_config_id)) == [written]
        assert [event.event for event in await reads.events.recent_events(team.team_id)] == ["seen"]


async def test_a_clickhouse_that_is_down_fails_the_reads_and_readiness(
    database_url: str, team: CreatedTeam
) -> None:
    # A closed port on loopback: nothing listens there.
    down = load_settings({}, EVENT_STORE="clickhouse-kafka", CLICKHOUSE_HOST="127.0.0.1:9")
    async with open_reads(down, database_url) as reads:
        with pytest.raises(ReadFailed, match="ClickHouse"):
            await reads.events.recent_events(team.team_id)
        with pytest.raises(ReadFailed):
            await reads.logs.log_entries(LogQuery(1))
        assert reads.probe is not None
        with pytest.raises(ReadFailed):
            await reads.probe()
