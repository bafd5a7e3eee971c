"""EVENT_STORE=clickhouse-kafka: the running server stores events, person rows and plugin logs into
ClickHouse's Kafka topics (here today's formats), and nothing into posthog_event; persons stay in
Postgres as well."""

from __future__ import annotations

import json

from tests.kafka_broker import read_topic, unique_topic

from .plugin_stack import Stack
from .server import wait_for_count


def test_a_server_stores_into_the_clickhouse_topics(stack: Stack, kafka: str) -> None:
    prefix = unique_topic("e2e") + "_"
    stack.install(
        "greeter",
        """
        async def process_event(event, meta):
            event["properties"]["greeting"] = "hej"
            return event
        """,
    )
    env = {
        "EVENT_STORE": "clickhouse-kafka",
        "CLICKHOUSE_KAFKA_FORMAT": "current",
        "KAFKA_HOSTS": kafka,
        "KAFKA_PREFIX": prefix,
        "KAFKA_FLUSH_FREQUENCY_MS": "5",
    }
    with stack.server(**env):
        stack.send("first", distinct_id="a", properties={"$set": {"plan": "pro"}})
        stack.send("second", distinct_id="a")
        stack.send("third", distinct_id="b")
        assert wait_for_count(stack.database_url, "SELECT COUNT(*) FROM posthog_person", 2) == 2
        events = read_topic(kafka, prefix + "clickhouse_events_json", 3)
        logs = read_topic(kafka, prefix + "plugin_log_entries", 1)
    rows = {row["event"]: row for row in (json.loads(record.value() or b"") for record in events)}
    assert set(rows) == {"first", "second", "third"}
    assert json.loads(rows["second"]["properties"])["greeting"] == "hej"
    assert json.loads(rows["second"]["person_properties"]) == {"plan": "pro"}
    assert rows["first"]["person_id"] == rows["second"]["person_id"] != rows["third"]["person_id"]
    assert any(json.loads(record.value() or b"")["message"].startswith("Plugin loaded") for record in logs)
    persons = read_topic(kafka, prefix + "clickhouse_person", 2)
    assert {json.loads(record.value() or b"")["id"] for record in persons} == {
        rows["first"]["person_id"],
        rows["third"]["person_id"],
    }
    assert stack.db.execute("SELECT COUNT(*) FROM posthog_event").fetchone() == (0,)
    assert stack.db.execute("SELECT COUNT(*) FROM posthog_pluginlogentry").fetchone() == (0,)
