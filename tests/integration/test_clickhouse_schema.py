"""`plugin-server migrate --clickhouse` on chDB: the tables with their engines, versioned and idempotent;
rows delivered twice collapse; the Kafka tables' views copy each topic's messages (in the original's
and in today's formats) into the tables, over a stand-in for the Kafka engine that chDB lacks."""

from __future__ import annotations

import json
import uuid

import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import Producer
from typer.testing import CliRunner

from plugin_server.cli import app
from plugin_server.config import Settings, load_settings
from plugin_server.sinks.clickhouse.migrate import migrate_clickhouse
from plugin_server.sinks.clickhouse.schema import EVENTS_PROTO, FEEDS, kafka_statements
from tests.clickhouse_kafka_engine import copy_topics
from tests.kafka_broker import create_topic, unique_topic

TABLES = {
    "events": "ReplacingMergeTree",
    "person": "ReplacingMergeTree",
    "person_distinct_id": "CollapsingMergeTree",
    "person_distinct_id2": "ReplacingMergeTree",
    "groups": "ReplacingMergeTree",
    "session_recording_events": "ReplacingMergeTree",
    "plugin_log_entries": "ReplacingMergeTree",
    "events_dead_letter_queue": "ReplacingMergeTree",
    "plugin_server_migrations": "ReplacingMergeTree",
}


def engines(client: Client) -> dict[str, str]:
    rows = client.query(
        "SELECT name, engine FROM system.tables WHERE database = {db:String}",
        parameters={"db": client.database},
    ).result_rows
    return {name: engine for name, engine in rows}


def final_count(client: Client, table: str) -> int:
    return int(client.query(f"SELECT count() FROM {table} FINAL").result_rows[0][0])


def test_migrate_creates_the_tables_once(clickhouse: Client, clickhouse_settings: Settings) -> None:
    """Without a Kafka engine (chDB), the Kafka tables are Null tables under the same views."""
    expected = {
        **TABLES,
        **{feed.table: "Null" for feed in FEEDS["original"]},
        **{feed.view: "MaterializedView" for feed in FEEDS["original"]},
    }
    assert engines(clickhouse) == expected
    versions = clickhouse.query("SELECT version, name FROM plugin_server_migrations ORDER BY version")
    assert versions.result_rows == [
        (1, "events"),
        (2, "persons_and_groups"),
        (3, "plugin_logs_and_dead_letters"),
    ]
    database = clickhouse_settings.CLICKHOUSE_DATABASE
    assert migrate_clickhouse(clickhouse, database, formats="original", kafka_brokers=None) == []
    assert final_count(clickhouse, "plugin_server_migrations") == 3
    assert engines(clickhouse) == expected


def test_rows_delivered_twice_collapse(clickhouse: Client) -> None:
    event = uuid.uuid4()
    row = [event, "$pageview", "{}", "2021-11-28 10:00:00.123456", 2, "user-1", "", 1638093600, 0]
    columns = [
        "uuid",
        "event",
        "properties",
        "timestamp",
        "team_id",
        "distinct_id",
        "elements_chain",
        "_timestamp",
        "_offset",
    ]
    clickhouse.insert("events", [row], column_names=columns)
    clickhouse.insert("events", [[*row[:-1], 7]], column_names=columns)  # read again from another offset
    other = [uuid.uuid4(), *row[1:]]
    clickhouse.insert("events", [other], column_names=columns)
    assert final_count(clickhouse, "events") == 2

    person = uuid.uuid4()
    person_columns = ["id", "team_id", "properties", "version"]
    clickhouse.insert(
        "person", [[person, 2, '{"a": 1}', 0], [person, 2, '{"a": 2}', 1]], column_names=person_columns
    )
    clickhouse.insert(
        "person", [[person, 2, '{"a": 1}', 0]], column_names=person_columns
    )  # an old one, again
    assert clickhouse.query("SELECT properties FROM person FINAL").result_rows == [('{"a": 2}',)]

    pdi_columns = ["distinct_id", "person_id", "team_id", "_sign"]
    clickhouse.insert(
        "person_distinct_id", [["a", person, 2, 1], ["a", person, 2, 1]], column_names=pdi_columns
    )
    clickhouse.insert(
        "person_distinct_id", [["b", person, 2, 1], ["b", person, 2, -1]], column_names=pdi_columns
    )
    assert clickhouse.query("SELECT distinct_id FROM person_distinct_id FINAL").result_rows == [("a",)]

    group_columns = ["group_type_index", "group_key", "team_id", "group_properties", "_timestamp"]
    groups = [[0, "org", 2, '{"v": 1}', 1638093600], [0, "org", 2, '{"v": 2}', 1638093601]]
    clickhouse.insert("groups", groups, column_names=group_columns)
    assert clickhouse.query("SELECT group_properties FROM groups FINAL").result_rows == [('{"v": 2}',)]


def messages(*rows: dict[str, object]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def feed(client: Client, table: str, *rows: dict[str, object]) -> None:
    """What the Kafka engine does with the topic's messages: insert them into the Kafka table."""
    client.raw_insert(table, insert_block=messages(*rows), fmt="JSONEachRow")


PERSON = str(uuid.uuid4())
EVENT = str(uuid.uuid4())


@pytest.mark.parametrize("clickhouse_settings", ["original", "current"], indirect=True)
def test_kafka_views_copy_each_topic_into_its_table(
    clickhouse: Client, clickhouse_settings: Settings
) -> None:
    formats = clickhouse_settings.CLICKHOUSE_KAFKA_FORMAT
    event = {
        "uuid": EVENT,
        "event": "$pageview",
        "properties": '{"$current_url": "https://example.com"}',
        "timestamp": "2021-11-28 10:00:00.123",
        "team_id": 2,
        "distinct_id": "user-1",
        "elements_chain": 'a:href="/x"',
        "created_at": "2021-11-28 10:00:01.000",
    }
    person = {
        "id": PERSON,
        "created_at": "2021-11-28 10:00:00",
        "properties": '{"a": 1}',
        "team_id": 2,
        "is_identified": 1,
        "is_deleted": 0,
    }
    if formats == "original":
        feed(clickhouse, "kafka_events", event, event)  # a message read twice
        feed(clickhouse, "kafka_person", person)
        pdi = {"distinct_id": "user-1", "person_id": PERSON, "team_id": 2, "is_deleted": 0}
        feed(
            clickhouse,
            "kafka_person_unique_id",
            pdi,
            pdi,
            {**pdi, "distinct_id": "gone"},
            {**pdi, "distinct_id": "gone", "is_deleted": 1},
        )
        assert clickhouse.query("SELECT distinct_id FROM person_distinct_id FINAL").result_rows == [
            ("user-1",)
        ]
    else:
        today = {
            **event,
            "person_id": PERSON,
            "person_properties": '{"a": 1}',
            "person_created_at": "2021-11-28 10:00:00",
            "person_mode": "propertyless",
            "project_id": 2,
            "captured_at": None,
        }
        feed(clickhouse, "kafka_events_json", today, today)
        feed(
            clickhouse,
            "kafka_person",
            {**person, "version": 0, "last_seen_at": None},
            {**person, "properties": '{"a": 2}', "version": 1, "last_seen_at": "2021-11-28 10:00:00"},
        )
        pdi = {"distinct_id": "user-1", "person_id": PERSON, "team_id": 2, "is_deleted": 0, "version": 0}
        feed(clickhouse, "kafka_person_distinct_id2", pdi, {**pdi, "version": 1, "is_deleted": 1})
        assert clickhouse.query("SELECT is_deleted FROM person_distinct_id2 FINAL").result_rows == [(1,)]
        row = clickhouse.query("SELECT toString(person_id), person_mode, person_properties FROM events FINAL")
        assert row.result_rows == [(PERSON, "propertyless", '{"a": 1}')]
        assert clickhouse.query("SELECT properties FROM person FINAL").result_rows == [('{"a": 2}',)]
    assert clickhouse.query(
        "SELECT toString(uuid), toString(timestamp), elements_chain FROM events FINAL"
    ).result_rows == [(EVENT, "2021-11-28 10:00:00.123000", 'a:href="/x"')]
    group = {
        "group_type_index": 0,
        "group_key": "org",
        "team_id": 2,
        "group_properties": "{}",
        "created_at": "2021-11-28 10:00:00",
    }
    feed(clickhouse, "kafka_groups", group, group)
    log = {
        "id": str(uuid.uuid4()),
        "team_id": 2,
        "plugin_id": 1,
        "plugin_config_id": 3,
        "timestamp": "2021-11-28 10:00:00.000",
        "source": "CONSOLE",
        "type": "INFO",
        "message": "hello",
        "instance_id": str(uuid.uuid4()),
    }
    feed(clickhouse, "kafka_plugin_log_entries", log, log)
    recording = {
        "uuid": str(uuid.uuid4()),
        "team_id": 2,
        "distinct_id": "user-1",
        "session_id": "s1",
        "snapshot_data": "{}",
        "timestamp": "2021-11-28 10:00:00.000",
        "created_at": "2021-11-28 10:00:00.000",
    }
    feed(clickhouse, "kafka_session_recording_events", recording, recording)
    dead = {
        "id": str(uuid.uuid4()),
        "event_uuid": EVENT,
        "event": "e",
        "properties": "{}",
        "distinct_id": "d",
        "team_id": 2,
        "elements_chain": "",
        "created_at": "2021-11-28 10:00:00.000",
        "ip": "",
        "site_url": "",
        "now": "2021-11-28 10:00:00.000",
        "raw_payload": "{}",
        "error_timestamp": "2021-11-28 10:00:00.000",
        "error_location": "plugin",
        "error": "boom",
        "tags": ["a"],
    }
    feed(clickhouse, "kafka_events_dead_letter_queue", dead, dead)
    for table in (
        "events",
        "person",
        "groups",
        "plugin_log_entries",
        "session_recording_events",
        "events_dead_letter_queue",
    ):
        assert final_count(clickhouse, table) == 1, table


def test_kafka_tables_read_the_topics_in_the_formats_chosen() -> None:
    original = "\n".join(kafka_statements("original", brokers="kafka:9092", group="group1"))
    assert "kafka_topic_list = 'clickhouse_events_proto'" in original
    assert "kafka_format = 'Protobuf'" in original and "kafka_schema = 'events:Event'" in original
    assert "kafka_topic_list = 'clickhouse_person_unique_id'" in original
    assert "kafka_broker_list = 'kafka:9092'" in original
    today = "\n".join(kafka_statements("current", brokers="it's", prefix="prod_", group="group1"))
    assert "kafka_topic_list = 'prod_clickhouse_events_json'" in today and "Protobuf" not in today
    assert (
        "kafka_topic_list = 'prod_clickhouse_person_distinct_id'" in today
        and "TO person_distinct_id2" in today
    )
    assert "kafka_broker_list = 'it\\'s'" in today  # quoted


def test_the_cli_migrates_clickhouse(clickhouse_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKHOUSE_HOST", clickhouse_settings.CLICKHOUSE_HOST)
    monkeypatch.setenv("CLICKHOUSE_DATABASE", clickhouse_settings.CLICKHOUSE_DATABASE)
    first = CliRunner().invoke(app, ["migrate", "--clickhouse"])
    assert first.exit_code == 0, first.output
    assert first.output.split() == [
        "applied",
        "0001_events",
        "applied",
        "0002_persons_and_groups",
        "applied",
        "0003_plugin_logs_and_dead_letters",
    ]
    again = CliRunner().invoke(app, ["migrate", "--clickhouse"])
    assert (again.exit_code, again.output.strip()) == (0, "nothing to migrate")


def test_the_kafka_tables_need_the_brokers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKHOUSE_HOST", "127.0.0.1:9")
    monkeypatch.delenv("KAFKA_HOSTS", raising=False)
    result = CliRunner().invoke(app, ["migrate", "--clickhouse"])
    assert result.exit_code == 1
    assert "KAFKA_HOSTS is needed for the Kafka tables (or pass --no-kafka-engine)" in result.output
    assert load_settings({}).CLICKHOUSE_KAFKA_FORMAT == "original"


def varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def proto_field(number: int, value: int | str | bytes) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def test_the_original_protobuf_events_reach_events(clickhouse: Client) -> None:
    """A length-delimited `Event` as the original produced it (fields 1-8, and a google.protobuf.Timestamp
    in 9 and 10, which the shipped schema leaves out) is read by `kafka_events` with EVENTS_PROTO."""
    fields: list[tuple[int, int | str | bytes]] = [
        (1, EVENT),
        (2, "$autocapture"),
        (3, '{"$browser":"Firefox"}'),
        (4, "2021-11-28 10:00:00.123"),
        (5, 2),
        (6, "user-1"),
        (7, "2021-11-28 10:00:01.456"),
        (8, 'button:text="Go"'),
        (9, proto_field(1, 1638093601) + proto_field(2, 456_000_000)),
    ]
    body = b"".join(proto_field(number, value) for number, value in fields)
    message = varint(len(body)) + body
    columns = [
        "uuid",
        "event",
        "properties",
        "timestamp",
        "team_id",
        "distinct_id",
        "created_at",
        "elements_chain",
    ]
    schema = {"format_schema": f"{EVENTS_PROTO}:Event"}
    clickhouse.raw_insert("kafka_events", columns, insert_block=message * 2, fmt="Protobuf", settings=schema)
    stored = clickhouse.query(
        "SELECT toString(uuid), event, properties, toString(timestamp), team_id, distinct_id, "
        "toString(created_at), elements_chain FROM events FINAL"
    )
    assert stored.result_rows == [
        (
            EVENT,
            "$autocapture",
            '{"$browser":"Firefox"}',
            "2021-11-28 10:00:00.123000",
            2,
            "user-1",
            "2021-11-28 10:00:01.456000",
            'button:text="Go"',
        )
    ]


@pytest.mark.parametrize("clickhouse_settings", ["original", "current"], indirect=True)
async def test_the_topics_on_a_broker_reach_the_tables(
    clickhouse: Client, clickhouse_settings: Settings, kafka: str
) -> None:
    """Messages produced to the broker under a KAFKA_PREFIX (the original's protobuf events; today's JSON
    events and versioned distinct ids), each twice, consumed by the Kafka-engine stand-in: once after FINAL."""
    settings = clickhouse_settings.model_copy(
        update={"KAFKA_PREFIX": unique_topic("ch") + "_", "KAFKA_HOSTS": kafka}
    )
    if settings.CLICKHOUSE_KAFKA_FORMAT == "original":
        proto: list[tuple[int, int | str | bytes]] = [
            (1, EVENT),
            (2, "p"),
            (4, "2021-11-28 10:00:00.000"),
            (5, 2),
        ]
        body = b"".join(proto_field(number, value) for number, value in proto)
        records = [("clickhouse_events_proto", varint(len(body)) + body)] * 2
    else:
        event = {
            "uuid": EVENT,
            "event": "e",
            "properties": "{}",
            "timestamp": "2021-11-28 10:00:00.000",
            "team_id": 2,
            "distinct_id": "d",
            "elements_chain": "",
            "created_at": "2021-11-28 10:00:00.000",
            "person_id": PERSON,
            "person_properties": "{}",
            "person_created_at": "2021-11-28 10:00:00",
            "person_mode": "full",
            "project_id": 2,
        }
        pdi = {"distinct_id": "d", "person_id": PERSON, "team_id": 2, "is_deleted": 0, "version": 0}
        records = [
            ("clickhouse_events_json", json.dumps(event).encode()),
            ("clickhouse_events_json", json.dumps(event).encode()),
            ("clickhouse_person_distinct_id", json.dumps(pdi).encode()),
            ("clickhouse_person_distinct_id", json.dumps({**pdi, "version": 1}).encode()),
        ]
    producer = Producer({"bootstrap.servers": kafka})
    for topic in {topic for topic, _ in records}:
        create_topic(kafka, settings.KAFKA_PREFIX + topic, 1)
    for topic, value in records:
        producer.produce(settings.KAFKA_PREFIX + topic, value)
    assert producer.flush(10) == 0
    assert await copy_topics(clickhouse, settings, expected=len(records)) == len(records)
    assert clickhouse.query("SELECT toString(uuid), event FROM events FINAL").result_rows == [
        (EVENT, "p" if settings.CLICKHOUSE_KAFKA_FORMAT == "original" else "e")
    ]
    if settings.CLICKHOUSE_KAFKA_FORMAT == "current":
        assert clickhouse.query("SELECT version FROM person_distinct_id2 FINAL").result_rows == [(1,)]
