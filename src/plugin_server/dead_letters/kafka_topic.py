"""The dead letters of the Kafka source: KAFKA_DEAD_LETTER_TOPIC (format: sources/kafka/dead_letters.py).

A topic cannot be emptied, so "waiting" means not yet replayed: a replay produces each letter's
`raw_payload` (the message as it was consumed) to KAFKA_CONSUMPTION_TOPIC with its key, then commits
the replayed letters' offsets for the consumer group `<KAFKA_CONSUMER_GROUP>-dead-letter-replay`.
Counting and listing read the waiting letters (an operator's tool, not a hot path). The end of the
topic is where nothing arrives for a second (the test broker's "latest offset" answer is wrong).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from plugin_server.config import Settings
from plugin_server.dead_letters import Letter
from plugin_server.ingestion.kafka_config import kafka_config
from plugin_server.ingestion.kafka_producer import DELIVERY_TIMEOUT_SECONDS, producer_config

QUIET_SECONDS = 1.0


class KafkaDeadLetters:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topic = settings.KAFKA_DEAD_LETTER_TOPIC
        self._group = f"{settings.KAFKA_CONSUMER_GROUP}-dead-letter-replay"

    async def count(self) -> int:
        return len(await asyncio.to_thread(self._waiting, None))

    async def newest(self, limit: int) -> list[Letter]:
        messages = await asyncio.to_thread(self._waiting, None)
        letters = [_letter(message) for message in messages]
        return sorted(letters, key=lambda letter: str(letter["failed_at"]), reverse=True)[:limit]

    async def replay(self, limit: int | None = None) -> int:
        return await asyncio.to_thread(self._replay, limit)

    def _replay(self, limit: int | None) -> int:
        consumer = self._consumer()
        try:
            messages = self._read(consumer, limit)
            if not messages:
                return 0
            producer = Producer(producer_config(self._settings, DELIVERY_TIMEOUT_SECONDS))
            errors: list[Any] = []
            for message in messages:
                payload = str(_record(message).get("raw_payload", "")).encode()
                producer.produce(
                    self._settings.KAFKA_CONSUMPTION_TOPIC,
                    payload,
                    message.key(),
                    on_delivery=lambda error, _: errors.append(error) if error else None,
                )
            left = producer.flush(DELIVERY_TIMEOUT_SECONDS)
            if left or errors:
                raise ConnectionError(f"Kafka did not take {left + len(errors)} replayed messages")
            ends: dict[int, int] = {}
            for message in messages:
                partition = message.partition() or 0
                ends[partition] = max(ends.get(partition, 0), (message.offset() or 0) + 1)
            offsets = [TopicPartition(self._topic, partition, end) for partition, end in ends.items()]
            consumer.commit(offsets=offsets, asynchronous=False)
            return len(messages)
        finally:
            consumer.close()

    def _waiting(self, limit: int | None) -> list[Message]:
        consumer = self._consumer()
        try:
            return self._read(consumer, limit)
        finally:
            consumer.close()

    def _consumer(self) -> Consumer:
        return Consumer(
            {
                **kafka_config(self._settings),
                "group.id": self._group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )

    def _read(self, consumer: Consumer, limit: int | None) -> list[Message]:
        """The letters not yet replayed, partition by partition in offset order (at most `limit`)."""
        topics = consumer.list_topics(self._topic, timeout=10).topics
        if self._topic not in topics or topics[self._topic].error is not None:
            return []
        wanted = [
            TopicPartition(self._topic, partition) for partition in sorted(topics[self._topic].partitions)
        ]
        consumer.assign(consumer.committed(wanted, timeout=10))
        messages: list[Message] = []
        while limit is None or len(messages) < limit:
            message = consumer.poll(QUIET_SECONDS)
            if message is None:
                break
            if message.error() is None:
                messages.append(message)
        # Each partition's messages arrive in order: these are a prefix of each, so committing their ends
        # skips no letter.
        messages.sort(key=lambda message: (message.partition() or 0, message.offset() or 0))
        return messages


def _record(message: Message) -> dict[str, Any]:
    try:
        record = orjson.loads(message.value() or b"")
    except orjson.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def _letter(message: Message) -> Letter:
    record = _record(message)
    return {
        "reason": record.get("error"),
        "message": record.get("raw_payload"),
        "failed_at": record.get("error_timestamp"),
        "consumer": f"kafka {message.topic()}[{message.partition()}]@{message.offset()}",
    }
