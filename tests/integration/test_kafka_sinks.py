"""The ClickHouse sinks through Kafka on a real Kafka-protocol broker: a pipeline run stores into the
topics, each format decodes as ClickHouse's Kafka tables read it, and a redelivery collapses."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple

import psycopg
import pytest
from confluent_kafka import Message
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings, load_settings
from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.batches import process_until_done
from plugin_server.ingestion.groups import GroupRow
from plugin_server.ingestion.kafka_producer import KafkaProducer, KafkaUnavailableError, Record
from plugin_server.ingestion.ordering import Turnstile
from plugin_server.ingestion.person_outbox import PersonOutbox
from plugin_server.ingestion.persons import Key, PersonRow, persons_of
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.plugins.meta.logs import BufferedLogWriter, LogSource, LogType, PluginLogEntry
from plugin_server.sinks import PersonSinkRow
from plugin_server.sinks.kafka import KafkaEventSink, KafkaPersonSink
from plugin_server.sinks.kafka.current import CurrentFormat, personless_uuid
from plugin_server.sinks.kafka.original import OriginalFormat
from plugin_server.sinks.kafka.protobuf import Event
from plugin_server.topology import Sinks, open_log_writer, open_producer, open_sinks
from tests.kafka_broker import KafkaBroker, read_topic, unique_topic
from tests.pipelines import message, pipeline

Db = psycopg.Connection[Any]


def kafka_settings(bootstrap: str, **overrides: Any) -> Settings:
    values = {
        "EVENT_STORE": "clickhouse-kafka",
        "KAFKA_HOSTS": bootstrap,
        "KAFKA_FLUSH_FREQUENCY_MS": 5,
        "KAFKA_PREFIX": unique_topic("ch") + "_",
    }
    return load_settings({}, **{**values, **overrides})


class Opened(NamedTuple):
    settings: Settings
    sinks: Sinks


@pytest.fixture
async def opened(
    request: pytest.FixtureRequest, kafka: str, pool: AsyncConnectionPool[Any]
) -> AsyncIterator[Opened]:
    """The Kafka sinks in the format the test is parametrized with, on topics of its own."""
    settings = kafka_settings(kafka, CLICKHOUSE_KAFKA_FORMAT=request.param)
    async with open_sinks(settings, pool) as sinks:
        yield Opened(settings, sinks)


def batches(team_id: int) -> list[list[bytes]]:
    """Two persons, one with an autocaptured click; then $identify merges them; a group; a recording."""
    click = {"$set": {"a": 1}, "$elements": [{"tag_name": "a", "nth_child": 1, "nth_of_type": 2}]}
    group = {"$group_type": "org", "$group_key": "ph", "$group_set": {"n": 1}}
    steps = [
        [("anon", "$autocapture", click), ("user", "$pageview", {})],
        [
            ("user", "$identify", {"$anon_distinct_id": "anon", "$set": {"b": 2}}),
            ("user", "$groupidentify", group),
            ("user", "$snapshot", {"$session_id": "s1", "$snapshot_data": {"type": 2}}),
        ],
    ]
    return [
        [message(team_id, *step, task_id=f"{number}-{index}") for index, step in enumerate(batch)]
        for number, batch in enumerate(steps)
    ]


async def topic(settings: Settings, name: str, count: int) -> list[dict[str, Any]]:
    """The `count` records of a topic, JSON-decoded, with the key under "_key"."""
    messages = await asyncio.to_thread(
        read_topic, settings.KAFKA_HOSTS or "", settings.KAFKA_PREFIX + name, count
    )
    assert len(messages) == count, [m.value() for m in messages]
    return [{**json.loads(m.value() or b""), "_key": (m.key() or b"").decode()} for m in messages]


def undelimited(message: Message) -> Any:
    """The Event of a length-delimited protobuf record (ClickHouse's 'Protobuf' format)."""
    value = message.value() or b""
    length, shift, at = 0, 0, 0
    while True:
        byte = value[at]
        length |= (byte & 0x7F) << shift
        at += 1
        shift += 7
        if not byte & 0x80:
            break
    assert len(value) == at + length
    return Event.FromString(value[at:])


def postgres_persons(db: Db) -> dict[str, dict[str, Any]]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        rows = cursor.execute(
            "SELECT uuid::text, properties, is_identified, version, created_at FROM posthog_person"
        )
        return {row["uuid"]: row for row in rows.fetchall()}


async def run_batches(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, db: Db, sinks: Sinks
) -> dict[str, Any]:
    """Run `batches` through a pipeline with these sinks; answer the one person they leave in Postgres."""
    run = pipeline(pool, sinks.events, sinks.persons, sinks.outbox).run
    for batch in batches(team.team_id):
        outcome = await run(batch)
        assert outcome.dead_letters == []
    [person] = postgres_persons(db).values()
    return person


@pytest.mark.parametrize("opened", ["original"], indirect=True)
async def test_a_pipeline_run_stores_into_the_original_topics(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db, opened: Opened
) -> None:
    settings = opened.settings
    person = await run_batches(pool, team, clean_db, opened.sinks)

    messages = await asyncio.to_thread(
        read_topic, settings.KAFKA_HOSTS or "", settings.KAFKA_PREFIX + "clickhouse_events_proto", 4
    )
    events = {event.event: (event, record.key()) for record in messages for event in [undelimited(record)]}
    assert set(events) == {"$autocapture", "$pageview", "$identify", "$groupidentify"}
    click, key = events["$autocapture"]
    assert key == click.uuid.encode() and len(click.uuid) == 36
    assert (click.team_id, click.distinct_id) == (team.team_id, "anon")
    assert click.timestamp == "2021-11-28 09:59:58.123"
    assert datetime.strptime(click.created_at, "%Y-%m-%d %H:%M:%S.%f").year >= 2026  # ingested now
    assert click.elements_chain == 'a:nth-child="1"nth-of-type="2"'
    properties = json.loads(click.properties)
    assert properties["$set"] == {"a": 1} and properties["$ip"] == "1.2.3.4" and "$elements" not in properties
    assert json.loads(events["$groupidentify"][0].properties)["$group_set"] == {"n": 1}

    # 2 created; the merge (the merged person, the deleted one); identified; $set
    persons = await topic(settings, "clickhouse_person", 6)
    final = [row for row in persons if row["id"] == person["uuid"]][-1]
    assert final == {
        "id": person["uuid"],
        "created_at": person["created_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "properties": json.dumps(person["properties"], separators=(",", ":")),
        "team_id": team.team_id,
        "is_identified": True,
        "is_deleted": 0,
        "_key": person["uuid"],
    }
    [gone] = [row for row in persons if row["is_deleted"]]
    assert gone["id"] != person["uuid"]

    distinct_ids = await topic(settings, "clickhouse_person_unique_id", 4)
    assert [
        (row["distinct_id"], row["person_id"] == person["uuid"], row["is_deleted"]) for row in distinct_ids
    ][2:] == [
        ("anon", True, 0),
        ("anon", False, 1),
    ]
    assert set(distinct_ids[0]) == {"distinct_id", "person_id", "team_id", "is_deleted", "_key"}

    [group] = await topic(settings, "clickhouse_groups", 1)
    assert group == {
        "group_type_index": 0,
        "group_key": "ph",
        "team_id": team.team_id,
        "group_properties": '{"n":1}',
        "created_at": "2021-11-28 09:59:58",
        "_key": f"{team.team_id}:0:ph",
    }
    [recording] = await topic(settings, "clickhouse_session_recording_events", 1)
    assert recording.pop("_key") == recording["uuid"]
    assert recording == {
        "uuid": recording["uuid"],
        "team_id": team.team_id,
        "distinct_id": "user",
        "session_id": "s1",
        "snapshot_data": '{"type":2}',
        "timestamp": "2021-11-28 09:59:58.123",
        "created_at": "2021-11-28 09:59:58.123",
    }
    assert clean_db.execute("SELECT count(*) FROM posthog_event").fetchone() == (0,)


@pytest.mark.parametrize("opened", ["current"], indirect=True)
async def test_a_pipeline_run_stores_into_todays_topics(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db, opened: Opened
) -> None:
    settings = opened.settings
    person = await run_batches(pool, team, clean_db, opened.sinks)

    events = {row["event"]: row for row in await topic(settings, "clickhouse_events_json", 4)}
    identify = events["$identify"]
    assert identify.pop("_key") == identify["uuid"]
    created_at, captured_at = identify.pop("created_at"), identify.pop("captured_at")
    assert datetime.strptime(created_at, "%Y-%m-%d %H:%M:%S.%f").year >= 2026
    assert captured_at == "2021-11-28 10:00:00.000"
    assert identify == {
        "uuid": identify["uuid"],
        "event": "$identify",
        "properties": identify["properties"],
        "timestamp": "2021-11-28 09:59:58.123",
        "team_id": team.team_id,
        "project_id": team.team_id,
        "distinct_id": "user",
        "elements_chain": "",
        "person_id": person["uuid"],
        "person_properties": json.dumps({"a": 1, "b": 2}, separators=(",", ":")),
        "person_created_at": person["created_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "person_mode": "full",
    }
    click = events["$autocapture"]
    assert click["elements_chain"] == 'a:nth-child="1"nth-of-type="2"'
    assert "$elements" not in json.loads(click["properties"])
    assert click["person_id"] != person["uuid"]  # anon's own person, when its batch was stored

    persons = await topic(settings, "clickhouse_person", 6)
    final = max((row for row in persons if row["id"] == person["uuid"]), key=lambda row: row["version"])
    assert (final["version"], final["is_identified"], final["is_deleted"]) == (person["version"], 1, 0)
    assert final["last_seen_at"] is None
    [gone] = [row for row in persons if row["is_deleted"]]
    assert gone["version"] == 100  # a deleted person's version + 100, as PostHog's delete_person
    assert gone["id"] == click["person_id"]

    distinct_ids = await topic(settings, "clickhouse_person_distinct_id", 3)  # no is_deleted rows
    newest = {}
    for row in distinct_ids:
        if row["version"] >= newest.get(row["distinct_id"], {"version": -1})["version"]:
            newest[row["distinct_id"]] = row
    assert {key: (row["person_id"], row["version"]) for key, row in newest.items()} == {
        "anon": (person["uuid"], 1),
        "user": (person["uuid"], 0),
    }
    [group] = await topic(settings, "clickhouse_groups", 1)
    assert (group["group_key"], group["version"], group["group_properties"]) == ("ph", 0, '{"n":1}')


async def test_todays_event_records_take_the_persons_the_person_step_left(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, kafka: str
) -> None:
    """Only a distinct id that the person step did not load (seen recently, its event sets nothing) is
    read again for its event's person columns."""
    settings = kafka_settings(kafka)
    producer = KafkaProducer(settings)
    asked: list[set[Key]] = []

    async def lookup(keys: Iterable[Key]) -> dict[Key, PersonRow]:
        asked.append(set(keys))
        return await persons_of(pool, keys)

    format = CurrentFormat(settings.KAFKA_PREFIX)
    built = pipeline(pool, KafkaEventSink(producer, format, lookup), KafkaPersonSink(producer, format))
    try:
        await built.run([message(team.team_id, "a", "first", {"$set": {"x": 1}}, task_id="1")])
        assert asked == []
        await built.run([message(team.team_id, "a", "again", {}, task_id="2")])
        assert asked == [{(team.team_id, "a")}]
    finally:
        await producer.close()
    records = {row["event"]: row for row in await topic(settings, "clickhouse_events_json", 2)}
    assert records["first"]["person_properties"] == records["again"]["person_properties"] == '{"x":1}'
    assert records["first"]["person_id"] == records["again"]["person_id"]


def test_an_event_without_a_person_gets_posthogs_personless_uuid() -> None:
    assert personless_uuid(2, "someone") == personless_uuid(2, "someone") != personless_uuid(3, "someone")
    assert personless_uuid(2, "someone")[14] == "5"  # a version 5 (name-based) uuid


@pytest.mark.parametrize("opened", ["original"], indirect=True)
async def test_a_redelivered_batch_gives_records_that_collapse(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db, opened: Opened
) -> None:
    """The batch is run again by a new worker (the first died before acknowledging): the same events with
    the same uuids, and no person row that is not already in the topic."""
    settings, sinks = opened
    [batch, _] = batches(team.team_id)
    await pipeline(pool, sinks.events, sinks.persons).run(batch)
    await pipeline(pool, sinks.events, sinks.persons).run(batch)
    messages = await asyncio.to_thread(
        read_topic, settings.KAFKA_HOSTS or "", settings.KAFKA_PREFIX + "clickhouse_events_proto", 4
    )
    by_uuid: dict[str, set[bytes]] = {}
    for record in messages:
        event = undelimited(record)
        event.created_at = ""  # the time of ingestion, the one field that differs
        by_uuid.setdefault(event.uuid, set()).add(event.SerializeToString())
    assert len(by_uuid) == 2 and all(len(values) == 1 for values in by_uuid.values())
    persons = await topic(settings, "clickhouse_person", 2)
    assert len({row["id"] for row in persons}) == 2


async def test_plugin_log_entries_go_to_their_topic_over_the_workers_producer(
    kafka: str, pool: AsyncConnectionPool[Any]
) -> None:
    settings = kafka_settings(kafka)
    async with open_producer(settings) as producer:
        assert producer is not None
        writer = open_log_writer(settings, pool, producer)
        await _write_one_entry(writer, settings)
        # Closing the writer left the producer to its owner: the worker's sinks still send over it.
        async with open_sinks(settings, pool, producer) as sinks:
            await sinks.persons.write([GroupRow(2, 0, "org", {}, datetime(2021, 11, 28, tzinfo=UTC))])
        assert len(await topic(settings, "clickhouse_groups", 1)) == 1


async def _write_one_entry(writer: BufferedLogWriter, settings: Settings) -> None:
    entry = PluginLogEntry(
        id=uuidt(),
        team_id=2,
        plugin_id=3,
        plugin_config_id=4,
        timestamp=datetime(2021, 11, 28, 10, 0, 1, 234567, tzinfo=UTC),
        source=LogSource.CONSOLE,
        type=LogType.WARN,
        message="careful ü",
        instance_id=uuidt(),
    )
    writer.write(entry)
    await writer.close()
    [record] = await topic(settings, "plugin_log_entries", 1)
    assert record == {
        "id": entry.id,
        "team_id": 2,
        "plugin_id": 3,
        "plugin_config_id": 4,
        "timestamp": "2021-11-28 10:00:01.234",
        "source": "CONSOLE",
        "type": "WARN",
        "message": "careful ü",
        "instance_id": entry.instance_id,
        "_key": entry.id,
    }


async def test_a_record_larger_than_the_batch_byte_limit_is_delivered_not_dropped(kafka: str) -> None:
    """The original dropped such a record; here it goes in a batch of its own (2 MB: past librdkafka's
    default message.max.bytes as well)."""
    settings = kafka_settings(kafka, KAFKA_MAX_MESSAGE_BATCH_SIZE=1000)
    name = settings.KAFKA_PREFIX + "big"
    producer = KafkaProducer(settings)
    records = [Record(name, b"small 1"), Record(name, b"x" * 2_000_000), Record(name, b"small 2")]
    try:
        await producer.send(records)
    finally:
        await producer.close()
    messages = await asyncio.to_thread(read_topic, kafka, name, 3)
    assert sorted(len(message.value() or b"") for message in messages) == [7, 7, 2_000_000]


async def test_an_unreachable_broker_is_a_passing_error_so_the_batch_waits_and_is_tried_again() -> None:
    with KafkaBroker() as broker:
        settings = kafka_settings(broker.bootstrap)
        producer = KafkaProducer(settings, delivery_timeout=1.5)
        await producer.send([Record(settings.KAFKA_PREFIX + "t", b"before")])
    with pytest.raises(KafkaUnavailableError, match="did not take 1 of 1 records") as raised:
        await producer.send([Record(settings.KAFKA_PREFIX + "t", b"after")])
    assert isinstance(raised.value, ConnectionError)  # the worker retries such a batch as it is
    await producer.close()


class Watched(KafkaPersonSink):
    """The Kafka person sink, telling when a write failed."""

    def __init__(self, producer: KafkaProducer, format: OriginalFormat) -> None:
        super().__init__(producer, format)
        self.failed = asyncio.Event()

    async def write(self, rows: Sequence[PersonSinkRow]) -> None:
        try:
            await super().write(rows)
        except ConnectionError:
            self.failed.set()
            raise


async def test_a_batch_waits_out_a_broker_outage_and_loses_no_row(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    """Kafka is down when the batch is stored: the batch is tried again (not dead-lettered) until the
    broker is back, and the person rows committed by the first try reach their topic with the retry."""
    broker = KafkaBroker()  # its address is known, but it starts later
    settings = kafka_settings(broker.bootstrap)
    producer = KafkaProducer(settings, delivery_timeout=1.0)
    format = OriginalFormat(settings.KAFKA_PREFIX)
    persons = Watched(producer, format)
    built = pipeline(
        pool, KafkaEventSink(producer, format, partial(persons_of, pool)), persons, PersonOutbox()
    )
    [batch, _] = batches(team.team_id)
    storing = asyncio.create_task(process_until_done(built, batch, Turnstile().ticket()))
    try:
        await asyncio.wait_for(persons.failed.wait(), 15)
        assert not storing.done()
        waiting = clean_db.execute("SELECT count(*) FROM plugin_server_person_outbox").fetchone()
        assert waiting == (4,)  # two persons with their ids, recorded until Kafka takes them
        with broker:
            outcome = await asyncio.wait_for(storing, 60)
            assert (outcome.stored, outcome.dead_letters) == (2, [])
            assert len(await topic(settings, "clickhouse_person", 2)) == 2
            assert len(await topic(settings, "clickhouse_person_unique_id", 2)) == 2
            assert clean_db.execute("SELECT count(*) FROM plugin_server_person_outbox").fetchone() == (0,)
            events = await asyncio.to_thread(
                read_topic, broker.bootstrap, settings.KAFKA_PREFIX + "clickhouse_events_proto", 2
            )
            assert {undelimited(record).distinct_id for record in events} == {"anon", "user"}
    finally:
        storing.cancel()
        await producer.close()


async def test_a_whole_batch_is_sent_at_once_not_after_the_linger(kafka: str) -> None:
    """KAFKA_FLUSH_FREQUENCY_MS (librdkafka's linger) would hold each micro-batch that long before its
    acknowledgement; the sinks' batches are flushed as soon as they are handed over."""
    settings = kafka_settings(kafka, KAFKA_FLUSH_FREQUENCY_MS=1500)
    name = settings.KAFKA_PREFIX + "soon"
    producer = KafkaProducer(settings)
    try:
        await producer.send([Record(name, b"warm-up")])  # connects and creates the topic
        started = time.monotonic()
        await producer.send([Record(name, b"a"), Record(name, b"b")])
        assert time.monotonic() - started < 1.0
    finally:
        await producer.close()
    assert len(await asyncio.to_thread(read_topic, kafka, name, 3)) == 3
