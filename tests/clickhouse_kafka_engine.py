"""A stand-in for ClickHouse's Kafka engine, which chDB lacks: it consumes the ClickHouse topics from the
broker and inserts each message, as the engine would, into the stand-in Kafka table of its topic
(`kafka_statements(..., engine="Null")`: the same columns plus the engine's virtual ones), whose
materialized views then copy it into the tables, exactly as in production."""

from __future__ import annotations

import time
from collections import defaultdict

import orjson
from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from plugin_server.sinks.clickhouse.schema import EVENTS_PROTO, FEEDS, Formats, KafkaFeed, kafka_statements
from tests.kafka_broker import unique_topic


def create_stand_in_tables(client: Client, formats: Formats) -> None:
    for statement in kafka_statements(formats, brokers="unused", engine="Null"):
        client.command(statement)


def copy_topics(
    client: Client, bootstrap: str, formats: Formats, *, prefix: str = "", expected: int, timeout: float = 15
) -> int:
    """Consume the `formats` topics (named with `prefix`) from their beginning until `expected` messages
    came and none for a moment more; insert them into the stand-in Kafka tables. Returns how many."""
    feeds = {prefix + feed.topic: feed for feed in FEEDS[formats]}
    existing = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=timeout).topics
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": unique_topic("ch-engine"), "enable.auto.commit": False}
    )
    consumer.assign(
        [
            TopicPartition(topic, partition, 0)
            for topic in feeds
            if topic in existing
            for partition in existing[topic].partitions
        ]
    )
    received: dict[str, list[Message]] = defaultdict(list)
    count, deadline = 0, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                if count >= expected:
                    break
                continue
            if message.error() is None:
                received[message.topic() or ""].append(message)
                count += 1
    finally:
        consumer.close()
    for topic, messages in received.items():
        _insert(client, feeds[topic], messages)
    assert count >= expected, f"{count} of {expected} messages arrived"
    return count


def _insert(client: Client, feed: KafkaFeed, messages: list[Message]) -> None:
    if feed.format == "Protobuf":  # the virtual columns keep their defaults
        described = client.query(f"DESCRIBE TABLE {feed.table}").result_rows
        columns = [row[0] for row in described if not row[0].startswith("_")]
        block = b"".join(message.value() or b"" for message in messages)
        settings = {"format_schema": f"{EVENTS_PROTO}:Event"}
        client.raw_insert(feed.table, columns, insert_block=block, fmt="Protobuf", settings=settings)
        return
    rows = []
    for message in messages:
        row = orjson.loads(message.value() or b"{}")
        row.update(
            _timestamp=(message.timestamp()[1] or 0) // 1000,
            _offset=message.offset(),
            _partition=message.partition(),
        )
        rows.append(orjson.dumps(row) + b"\n")
    client.raw_insert(feed.table, insert_block=b"".join(rows), fmt="JSONEachRow")
