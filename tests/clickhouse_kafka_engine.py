"""A stand-in for ClickHouse's Kafka engine, which chDB lacks: it consumes the ClickHouse topics from the
broker and hands their messages to the direct writer's transport (sinks/clickhouse/topics.py), which
inserts them into the Kafka tables (Null tables on chDB), whose materialized views fill the tables as in
production. The engine's virtual columns keep their defaults (the time of the insert, offset 0)."""

from __future__ import annotations

import asyncio
import time

from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from plugin_server.config import Settings
from plugin_server.ingestion.kafka_producer import Record
from plugin_server.sinks.clickhouse.client import AsyncClickHouse
from plugin_server.sinks.clickhouse.schema import FEEDS
from plugin_server.sinks.clickhouse.topics import ClickHouseTopicWriter
from tests.kafka_broker import unique_topic


async def copy_topics(client: Client, settings: Settings, *, expected: int, timeout: float = 15) -> int:
    """Consume the topics of CLICKHOUSE_KAFKA_FORMAT (named with KAFKA_PREFIX) at KAFKA_HOSTS from their
    beginning until `expected` messages came and none for a moment more; store them. Returns how many."""
    topics = {settings.KAFKA_PREFIX + feed.topic for feed in FEEDS[settings.CLICKHOUSE_KAFKA_FORMAT]}
    messages = await asyncio.to_thread(_consume, settings.KAFKA_HOSTS or "", topics, expected, timeout)
    writer = ClickHouseTopicWriter.for_settings(AsyncClickHouse(client), settings)
    await writer.send([Record(message.topic() or "", message.value() or b"") for message in messages])
    return len(messages)


def _consume(bootstrap: str, topics: set[str], expected: int, timeout: float) -> list[Message]:
    existing = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=timeout).topics
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": unique_topic("ch-engine"),
        "enable.auto.commit": False,
    }
    consumer = Consumer(config)
    consumer.assign(
        [
            TopicPartition(topic, partition, 0)
            for topic in topics & set(existing)
            for partition in existing[topic].partitions
        ]
    )
    received: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                if len(received) >= expected:
                    break
            elif message.error() is None:
                received.append(message)
    finally:
        consumer.close()
    assert len(received) >= expected, f"{len(received)} of {expected} messages arrived"
    return received
