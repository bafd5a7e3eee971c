"""The server's one Kafka producer, and captured events into the Kafka ingestion topic.

`KafkaProducer.send` hands a batch of records to librdkafka and returns only once the broker has
acknowledged every one of them, so that whoever calls it (the capture API, the ClickHouse sinks, plugin
logs) acknowledges its own input only for records that are safely in their topics. librdkafka reports
deliveries through callbacks served by `poll()`; a thread polls and hands each report to the event loop.
(confluent-kafka's experimental `aio.AIOProducer` serves reports only when the next batch is produced
or on flush, and adds a second buffer on top of linger.ms, so it does not fit a wait per batch.)

No record is dropped. librdkafka batches records per partition (KAFKA_PRODUCER_MAX_QUEUE_SIZE records,
KAFKA_MAX_MESSAGE_BATCH_SIZE bytes, KAFKA_FLUSH_FREQUENCY_MS; see `producer_config`) and sends a record
larger than a batch in a batch of its own, where the original dropped it. A record whose delivery failed
for a passing reason is produced again until the delivery timeout; then `send` raises
`KafkaUnavailableError`, a ConnectionError, so the worker retries its batch later. A record the broker
refuses for good (larger than the topic's max.message.bytes, say) raises `KafkaDeliveryError`, so the
worker splits the batch and the event becomes a dead letter with that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from plugin_server.config import Settings, SettingsError
from plugin_server.ingestion.enqueue import CapturedEvent
from plugin_server.ingestion.kafka_config import KafkaConfig, kafka_config

log = logging.getLogger(__name__)

DeliveryReport = Callable[[KafkaError | None, Message], None]

# How long a record may wait for the broker's acknowledgement, retries included, before `send` gives up.
DELIVERY_TIMEOUT_SECONDS = 10.0
RETRY_DELAY_SECONDS = 0.1
# How long `send` waits before handing over more records while librdkafka's local queue is full.
QUEUE_FULL_WAIT_SECONDS = 0.01
# How often the poll thread looks for delivery reports and flush requests, and how long a flush it
# makes may wait (long enough for librdkafka's broker threads to wake up and send: a flush that ends
# before they do sends nothing early).
POLL_SECONDS = 0.005
FLUSH_SECONDS = 0.05
# The largest record librdkafka lets through (its own maximum): the broker's limit is the one that
# counts, and a record it refuses is an error that names its size, not a silent drop.
MAX_RECORD_BYTES = 1_000_000_000

# Local delivery errors that say "not now" rather than "never".
_PASSING = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._QUEUE_FULL,
    }
)


class KafkaDeliveryError(Exception):
    """Kafka did not take some records of a `send` (the capture API answers 503)."""


class KafkaUnavailableError(KafkaDeliveryError, ConnectionError):
    """Kafka did not take some records in time, for a passing reason: try the whole batch again later."""


class Record(NamedTuple):
    """One Kafka message to produce."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: list[tuple[str, str | bytes | None]] | None = None


def capture_message(event: CapturedEvent) -> tuple[bytes, bytes]:
    """(key, value) of one event's message, as PostHog capture's `log_event` wrote them.

    The key is the SHA-256 (hex) of "<team_id>:<distinct_id>" as in PostHog capture, so all events of a
    person go to one partition and keep their order. The value is the JSON the ingestion consumer reads
    (reference section 3.2), with `data` as a JSON string and a missing sent_at as "".
    """
    key = capture_key(event.team_id, event.distinct_id)
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


def capture_key(team_id: int, distinct_id: str) -> bytes:
    """The key of a captured event's message: the SHA-256 (hex) of "<team_id>:<distinct_id>"."""
    return hashlib.sha256(f"{team_id}:{distinct_id}".encode()).hexdigest().encode("ascii")


def producer_config(settings: Settings, delivery_timeout: float) -> KafkaConfig:
    """librdkafka producer settings from the original's KAFKA_* producer settings.

    KAFKA_PRODUCER_MAX_QUEUE_SIZE meant "send once this many records are queued": that is librdkafka's
    batch.num.messages (its queue.buffering.max.messages is a hard capacity that would reject bursts).
    KAFKA_MAX_MESSAGE_BATCH_SIZE is batch.size, which, unlike the original's byte limit, still sends a
    larger record alone; message.max.bytes is raised so librdkafka refuses no record by its size.
    The murmur2 partitioner is the Java client's, so a key lands where PostHog's own producers put it.
    Idempotence keeps each partition in order and free of duplicates when librdkafka retries.
    Batches are compressed (KAFKA_COMPRESSION_CODEC, lz4 by default): fewer bytes cost less CPU in the
    broker and in librdkafka's network thread than they take to compress.
    """
    return {
        **kafka_config(settings),
        "linger.ms": settings.KAFKA_FLUSH_FREQUENCY_MS,
        "batch.num.messages": max(1, settings.KAFKA_PRODUCER_MAX_QUEUE_SIZE),
        "batch.size": settings.KAFKA_MAX_MESSAGE_BATCH_SIZE,
        "compression.codec": settings.KAFKA_COMPRESSION_CODEC,
        "message.max.bytes": MAX_RECORD_BYTES,
        "message.timeout.ms": int(delivery_timeout * 1000),
        "enable.idempotence": True,
        "partitioner": "murmur2_random",
    }


class KafkaProducer:
    """One librdkafka producer with a thread that serves its delivery reports."""

    def __init__(self, settings: Settings, *, delivery_timeout: float = DELIVERY_TIMEOUT_SECONDS) -> None:
        self._delivery_timeout = delivery_timeout
        self._producer = Producer(producer_config(settings, delivery_timeout), logger=log)
        self._closing = threading.Event()
        self._flush_wanted = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-producer-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._closing.is_set():
            if self._flush_wanted.is_set():
                self._flush_wanted.clear()
                self._producer.flush(FLUSH_SECONDS)  # also serves delivery reports
            else:
                self._producer.poll(POLL_SECONDS)

    async def send(self, records: Sequence[Record], *, linger: bool = False) -> None:
        """Produce every record and wait until the broker acknowledged all of them.

        The records are a whole batch (the ClickHouse sinks', plugin logs'), sent without waiting for more
        to come: librdkafka is flushed once they are handed over, or every micro-batch would wait its
        linger (linger.ms, KAFKA_FLUSH_FREQUENCY_MS) before its acknowledgement. With `linger` they wait
        for other calls' records to join them in a request, as the capture API's events do.

        Records whose delivery failed for a passing reason are produced again until the delivery timeout.
        A failure can still leave other records of the call in their topics (Kafka has no partial
        rollback without transactions): callers send again what they could not acknowledge, and the
        records carry what makes their consumers collapse duplicates (uuids, versions).
        """
        deadline = time.monotonic() + self._delivery_timeout
        pending = list(records)
        while pending:
            failed = await self._deliver(pending, deadline, linger)
            refused = [error for _, error in failed if not _passing(error)]
            if refused:
                raise KafkaDeliveryError(_summary(refused, records))
            if failed and time.monotonic() >= deadline:
                raise KafkaUnavailableError(_summary([error for _, error in failed], records))
            pending = [record for record, _ in failed]
            if pending:
                await asyncio.sleep(RETRY_DELAY_SECONDS)

    async def _deliver(
        self, records: list[Record], deadline: float, linger: bool
    ) -> list[tuple[Record, KafkaError]]:
        """Produce the records; once each one is reported, those that failed, with their errors."""
        deliveries = DeliveryReports(asyncio.get_running_loop(), records)
        for record in records:
            while not self._produce(record, deliveries.report):
                if time.monotonic() >= deadline:
                    raise KafkaUnavailableError("the Kafka producer queue stayed full")
                if not linger:
                    self._flush_wanted.set()
                await asyncio.sleep(QUEUE_FULL_WAIT_SECONDS)
        if not linger:
            self._flush_wanted.set()
        await deliveries.done
        return deliveries.failed

    def _produce(self, record: Record, on_delivery: DeliveryReport) -> bool:
        """Hand one record to librdkafka; False while its local queue is full."""
        try:  # positional (partition unassigned, no timestamp): cheaper than parsing keywords
            self._producer.produce(
                record.topic, record.value, record.key, -1, on_delivery, None, 0, record.headers
            )
        except BufferError:
            return False
        except KafkaException as error:
            raise KafkaDeliveryError(
                f"Kafka refused a record of {len(record.value)} bytes for {record.topic}: {error.args[0]}"
            ) from None
        return True

    async def close(self) -> None:
        """Stop polling, then wait for records still in flight (up to the delivery timeout): one thread
        at a time serves the delivery reports."""
        if self._closing.is_set():
            return
        self._closing.set()
        await asyncio.to_thread(self._poller.join)
        await asyncio.to_thread(self._producer.flush, self._delivery_timeout)


class DeliveryReports:
    """The delivery reports of one `send`'s records. librdkafka reports each record to `report` on the
    poll thread, one bound method for all of them; it only counts them (and keeps the failed records),
    and the event loop hears once, when the last is in: a future and a loop wake-up per record cost more
    than producing the record, and a callable made per record (a partial) was a tenth of the producing.
    A report carries the record's topic, key and value but no headers, so a failed record, to produce
    again whole, is found among `records` by those three (records alike in them are taken as one: the
    sinks' headers follow from the value)."""

    __slots__ = ("_left", "_loop", "_unreported", "done", "failed", "records")

    def __init__(self, loop: asyncio.AbstractEventLoop, records: list[Record]) -> None:
        self._loop = loop
        self._left = len(records)
        self._unreported: dict[tuple[str, bytes | None, bytes], list[Record]] | None = None
        self.records = records
        self.done: asyncio.Future[None] = loop.create_future()
        self.failed: list[tuple[Record, KafkaError]] = []

    def report(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.failed.append((self._record_of(message), error))
        self._left -= 1
        if not self._left:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                self._loop.call_soon_threadsafe(_settle, self.done)

    def _record_of(self, message: Message) -> Record:
        """The record `message` reports on (indexed at the first failure: failures are rare)."""
        if self._unreported is None:
            self._unreported = {}
            for record in reversed(self.records):
                self._unreported.setdefault((record.topic, record.key, record.value), []).append(record)
        return self._unreported[(message.topic() or "", message.key(), message.value() or b"")].pop()


def _passing(error: KafkaError) -> bool:
    return error.retriable() or error.code() in _PASSING


def _summary(errors: list[KafkaError], records: Sequence[Record]) -> str:
    topics = ", ".join(sorted({record.topic for record in records}))
    return f"Kafka did not take {len(errors)} of {len(records)} records for {topics}: {errors[0].str()}"


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():  # cancelled: the sender stopped waiting
        done.set_result(None)


class KafkaEnqueuer:
    """The EventEnqueuer for KAFKA_ENABLED: events go to KAFKA_CONSUMPTION_TOPIC, over `producer` (a
    worker's one producer, which its owner closes) or else a producer of its own, closed with it."""

    def __init__(
        self,
        settings: Settings,
        producer: KafkaProducer | None = None,
        *,
        delivery_timeout: float = DELIVERY_TIMEOUT_SECONDS,
    ) -> None:
        self._topic = settings.KAFKA_CONSUMPTION_TOPIC
        self._owned = producer is None
        self._producer = producer or KafkaProducer(settings, delivery_timeout=delivery_timeout)

    async def enqueue(self, events: Sequence[CapturedEvent]) -> None:
        """Produce every event and wait for all acknowledgements; raise KafkaDeliveryError if any failed."""
        records = []
        for event in events:
            key, value = capture_message(event)
            records.append(Record(self._topic, value, key))
        await self._producer.send(records, linger=True)  # concurrent requests' events share requests

    async def close(self) -> None:
        if self._owned:
            await self._producer.close()


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
