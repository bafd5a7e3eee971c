"""Captured events into the Kafka ingestion topic, in the message format PostHog's capture produced.

`KafkaEnqueuer.enqueue` returns only once the broker has acknowledged every message, so the capture
API answers {"status": 1} only for events that are safely in the topic. librdkafka reports deliveries
through callbacks served by `poll()`; a thread polls and hands each report to the event loop.
(confluent-kafka's experimental `aio.AIOProducer` serves reports only when the next batch is produced
or on flush, and adds a second buffer on top of linger.ms, so it does not fit a wait per request.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from plugin_server.config import Settings, SettingsError
from plugin_server.ingestion.enqueue import CapturedEvent
from plugin_server.ingestion.kafka_config import KafkaConfig, kafka_config

log = logging.getLogger(__name__)

DeliveryReport = Callable[[KafkaError | None, Message], None]

# How long a message may wait for the broker's acknowledgement before `enqueue` gives up on it.
DELIVERY_TIMEOUT_SECONDS = 10.0


class KafkaDeliveryError(Exception):
    """Kafka did not acknowledge some events of an `enqueue` call (the capture API answers 503)."""


def capture_message(event: CapturedEvent) -> tuple[bytes, bytes]:
    """(key, value) of one event's message, as PostHog capture's `log_event` wrote them.

    The key is the SHA-256 (hex) of "<team_id>:<distinct_id>" as in PostHog capture, so all events of a
    person go to one partition and keep their order. The value is the JSON the ingestion consumer reads
    (reference section 3.2), with `data` as a JSON string and a missing sent_at as "".
    """
    key = hashlib.sha256(f"{event.team_id}:{event.distinct_id}".encode()).hexdigest().encode("ascii")
    value = orjson.dumps(
        {
            "uuid": event.uuid,
            "distinct_id": event.distinct_id,
            "ip": event.ip,
            "site_url": event.site_url,
            "data": orjson.dumps(event.data).decode(),
            "team_id": event.team_id,
            "now": event.now,
            "sent_at": event.sent_at or "",
        }
    )
    return key, value


def producer_config(settings: Settings, delivery_timeout: float) -> KafkaConfig:
    """librdkafka producer settings from the original's KAFKA_* producer settings.

    KAFKA_PRODUCER_MAX_QUEUE_SIZE meant "send once this many records are queued": that is librdkafka's
    batch.num.messages (its queue.buffering.max.messages is a hard capacity that would reject bursts).
    The murmur2 partitioner is the Java client's, so a key lands where PostHog's own producers put it.
    Idempotence keeps each partition in order and free of duplicates when librdkafka retries.
    """
    return {
        **kafka_config(settings),
        "linger.ms": settings.KAFKA_FLUSH_FREQUENCY_MS,
        "batch.num.messages": max(1, settings.KAFKA_PRODUCER_MAX_QUEUE_SIZE),
        "batch.size": settings.KAFKA_MAX_MESSAGE_BATCH_SIZE,
        "message.timeout.ms": int(delivery_timeout * 1000),
        "enable.idempotence": True,
        "partitioner": "murmur2_random",
    }


class KafkaEnqueuer:
    """The EventEnqueuer for KAFKA_ENABLED: events go to KAFKA_CONSUMPTION_TOPIC."""

    def __init__(self, settings: Settings, *, delivery_timeout: float = DELIVERY_TIMEOUT_SECONDS) -> None:
        self._topic = settings.KAFKA_CONSUMPTION_TOPIC
        self._delivery_timeout = delivery_timeout
        self._producer = Producer(producer_config(settings, delivery_timeout), logger=log)
        self._closing = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-producer-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(0.1)

    async def enqueue(self, events: Sequence[CapturedEvent]) -> None:
        """Produce every event and wait for all acknowledgements; raise KafkaDeliveryError if any failed.

        A failure can still leave the other events of the call in the topic (Kafka has no partial
        rollback without transactions); the caller answers 503 and the client sends again.
        """
        loop = asyncio.get_running_loop()
        deliveries: list[asyncio.Future[str | None]] = []
        deadline = time.monotonic() + self._delivery_timeout
        for event in events:
            delivered: asyncio.Future[str | None] = loop.create_future()
            key, value = capture_message(event)
            await self._produce(key, value, _reporter(loop, delivered), deadline)
            deliveries.append(delivered)
        errors = [error for error in await asyncio.gather(*deliveries) if error is not None]
        if errors:
            raise KafkaDeliveryError(
                f"Kafka did not take {len(errors)} of {len(events)} events for {self._topic}: {errors[0]}"
            )

    async def _produce(self, key: bytes, value: bytes, on_delivery: DeliveryReport, deadline: float) -> None:
        """Hand one message to librdkafka, waiting (until `deadline`) while its local queue is full."""
        while True:
            try:
                self._producer.produce(self._topic, value, key, on_delivery=on_delivery)
                return
            except BufferError:
                if time.monotonic() >= deadline:
                    raise KafkaDeliveryError("the Kafka producer queue stayed full") from None
                await asyncio.sleep(0.01)
            except KafkaException as error:
                raise KafkaDeliveryError(f"Kafka refused an event: {error.args[0]}") from None

    async def close(self) -> None:
        """Wait for messages still in flight (up to the delivery timeout), then stop polling."""
        if self._closing.is_set():
            return
        await asyncio.to_thread(self._producer.flush, self._delivery_timeout)
        self._closing.set()
        await asyncio.to_thread(self._poller.join)


def _reporter(loop: asyncio.AbstractEventLoop, delivered: asyncio.Future[str | None]) -> DeliveryReport:
    """A delivery callback (run on the poll thread) that settles `delivered` with None or the error."""

    def report(error: KafkaError | None, _message: Message) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(_settle, delivered, None if error is None else str(error))

    return report


def _settle(delivered: asyncio.Future[str | None], error: str | None) -> None:
    if not delivered.done():
        delivered.set_result(error)


async def kafka_ready(settings: Settings, timeout: float = 2.0) -> str | None:
    """None when a Kafka broker answers a metadata request within `timeout` seconds, else why not."""
    try:
        config = kafka_config(settings)
    except SettingsError as error:
        return str(error)

    def brokers() -> int:
        return len(AdminClient(config).list_topics(timeout=timeout).brokers)

    try:
        if await asyncio.to_thread(brokers):
            return None
    except KafkaException as error:
        return f"Kafka at {settings.KAFKA_HOSTS} did not answer: {error.args[0]}"
    return f"Kafka at {settings.KAFKA_HOSTS} lists no brokers"
