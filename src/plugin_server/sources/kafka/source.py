"""KAFKA_CONSUMPTION_TOPIC as a source: every worker of every server is one consumer of the group
KAFKA_CONSUMER_GROUP, so instances share the topic's partitions (scale out = more consumers).

Delivery is at-least-once. Offsets are committed by hand, per partition, only up to the contiguous
prefix of messages whose batches are acknowledged (stored, or stored as dead letters): with several
batches in flight, a batch that finishes early waits for the earlier ones before its offsets count.
A crash or a rebalance redelivers what was not committed; event writes are idempotent on the event
uuid per team, so nothing is stored twice. Messages of one person share a partition (capture keys
them by team and distinct id), and a partition's messages are claimed in order.

This source does not split batches: a team whose plugins are slow holds up its batch (the batch's
offsets could not be committed before the slow part anyway).

Backpressure: while all TASKS_PER_WORKER batches are in flight the worker claims one more batch and
then nothing, and librdkafka's prefetch is bounded (queued.max.messages.kbytes). When the pipeline
stays full for PAUSE_AFTER_SECONDS (slow plugins, a database outage), `paused_until` pauses every
assigned partition, which also drops librdkafka's prefetched messages (they are fetched again on
resume), and keeps polling, so the consumer stays in its group however long the pipeline takes
(max.poll.interval.ms).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from plugin_server.config import Settings
from plugin_server.ingestion.kafka_config import kafka_config
from plugin_server.ingestion.teams import TeamManager
from plugin_server.services.metrics import get_metrics
from plugin_server.sources import DeadLetter
from plugin_server.sources.kafka.codec import KafkaCodec
from plugin_server.sources.kafka.dead_letters import dead_letter_record

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT_SECONDS = 10.0
PREFETCH_KBYTES = 16 * 1024
# A pipeline full for this long pauses the consumer; polls while paused wait this long (a resume can
# wait for the poll in progress, so it is short).
PAUSE_AFTER_SECONDS = 0.5
PAUSED_POLL_SECONDS = 0.1
STATISTICS_INTERVAL_MS = 1000
# The longest a claim waiting for messages leaves an acknowledged batch's offsets uncommitted.
COMMIT_WAIT_SECONDS = 0.05

Partition = tuple[str, int]
T = TypeVar("T")


class KafkaUnavailable(ConnectionError):
    """Kafka did not take the dead letters of a batch (the acknowledgement is retried)."""


@dataclass(slots=True)
class KafkaBatch:
    messages: list[bytes]
    keys: list[bytes | None]
    # (partition, offset, generation of the partition's assignment when claimed), one per message
    positions: list[tuple[Partition, int, int]]


class _Progress:
    """The claimed offsets of one assigned partition, in claim order, and which are acknowledged."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.claimed: deque[int] = deque()
        self.done: set[int] = set()

    def done_prefix(self) -> int | None:
        """Forget the acknowledged offsets at the front; the offset to commit (last of them + 1)."""
        last = None
        while self.claimed and self.claimed[0] in self.done:
            last = self.claimed.popleft()
            self.done.discard(last)
        return None if last is None else last + 1


class KafkaSource:
    name = "kafka"
    can_split = False

    def __init__(
        self,
        settings: Settings,
        teams: TeamManager,
    ) -> None:
        self.codec = KafkaCodec(teams)
        self.topic = settings.KAFKA_CONSUMPTION_TOPIC
        self.dead_letter_topic = settings.KAFKA_DEAD_LETTER_TOPIC
        self.group_id = settings.KAFKA_CONSUMER_GROUP
        common = kafka_config(settings)
        self._consumer = Consumer(
            {
                **common,
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": settings.KAFKA_CONSUMER_SESSION_TIMEOUT_MS,
                "heartbeat.interval.ms": max(100, settings.KAFKA_CONSUMER_SESSION_TIMEOUT_MS // 10),
                "queued.max.messages.kbytes": PREFETCH_KBYTES,
                "statistics.interval.ms": STATISTICS_INTERVAL_MS,
                "stats_cb": self._statistics,
                "on_commit": self._committed,
            },
            logger=log,
        )
        self._producer = Producer({**common, "enable.idempotence": True, "linger.ms": 5}, logger=log)
        # Every call of the consumer runs on its own thread (`_client`), one at a time: the client makes a
        # call wait while another thread polls (a commit from `ack` waited up to a second for the
        # claim's poll, which held up every batch behind it), and a thread that waits for it while
        # holding a lock that a rebalance callback needs would deadlock. Assignment and commit
        # callbacks run there too, inside poll(); claims and acks keep their books on the event loop.
        self._client = ThreadPoolExecutor(1, thread_name_prefix="kafka-consumer")
        self._lock = threading.Lock()
        self._progress: dict[Partition, _Progress] = {}
        self._generation = 0
        self._to_commit: dict[Partition, int] = {}
        self._sent: dict[Partition, int] = {}  # the last offset sent for commit, per partition
        self._closed = False
        self._paused = False
        # Messages that a poll returned while paused (of partitions a rebalance assigned meanwhile).
        self._held: list[Message] = []
        self.prefetched = 0  # messages librdkafka holds fetched but not claimed, per its statistics

    async def start(self) -> None:
        self._consumer.subscribe(
            [self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )

    async def claim(self, max_count: int, block_timeout: float) -> KafkaBatch | None:
        with self._lock:
            received, self._held = self._held[:max_count], self._held[max_count:]
        if len(received) < max_count:
            wait = 0 if received else block_timeout
            received += await self._call(self._receive, max_count - len(received), wait)
        batch = KafkaBatch([], [], [])
        with self._lock:
            for message in received:
                partition = self._partition_of(message)
                offset = message.offset() or 0
                progress = self._progress.get(partition)
                if progress is None:  # books are made on assignment; one per partition, not per message
                    progress = self._progress[partition] = _Progress(self._next_generation())
                progress.claimed.append(offset)
                batch.messages.append(message.value() or b"")
                batch.keys.append(message.key())
                batch.positions.append((partition, offset, progress.generation))
        return batch if batch.messages else None

    async def ack(self, batch: KafkaBatch, dead_letters: Sequence[DeadLetter] = ()) -> bool:
        """Store the dead letters on the dead letter topic (waiting for Kafka to take them), then count
        the batch's offsets as done; what became contiguous is committed by the next claim's thread
        (or housekeeping)."""
        await self._send_dead_letters(batch, dead_letters)
        get_metrics().dead_lettered(len(dead_letters))
        current = True
        with self._lock:
            touched = set()
            for partition, offset, generation in batch.positions:
                progress = self._progress.get(partition)
                if progress is None or progress.generation != generation:
                    current = False  # revoked since: another consumer has (or will get) these messages
                    continue
                progress.done.add(offset)
                touched.add(partition)
            for partition in touched:
                commit = self._progress[partition].done_prefix()
                if commit is not None:
                    self._to_commit[partition] = commit
        return current

    async def paused_until(self, room: Awaitable[object]) -> None:
        """Wait for `room` in the pipeline; if that takes PAUSE_AFTER_SECONDS, with every assigned
        partition paused (no fetching, prefetched messages dropped) and the consumer still polled."""
        waiting = asyncio.ensure_future(room)
        done, _ = await asyncio.wait([waiting], timeout=PAUSE_AFTER_SECONDS)
        if done:
            return
        await self._call(self._pause)
        try:
            while not waiting.done():
                await self._call(self._poll_paused)
        finally:
            await self._call(self._resume)
        await waiting

    async def split_off(self, batch: KafkaBatch, messages: Sequence[bytes]) -> KafkaBatch:
        raise NotImplementedError("the Kafka source does not split batches (can_split is False)")

    async def housekeeping(self) -> int:
        """Commit what waits (and retry a commit that failed); sample the lag of each assigned
        partition. Returns their sum."""
        await self._call(self._commit, True)
        lags = await self._call(self._lag)
        for (topic, partition), lag in lags.items():
            get_metrics().kafka_lag_sampled(topic, partition, lag)
        return sum(lags.values())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._call(self._commit, True)
        await asyncio.to_thread(self._producer.flush, DELIVERY_TIMEOUT_SECONDS)
        await self._call(self._consumer.close)
        self._client.shutdown()

    async def _call(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` on the consumer's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._client, work, *args)

    def _receive(self, max_count: int, block_timeout: float) -> list[Message]:
        """Up to `max_count` messages, waiting up to `block_timeout` s for the first. The wait is polled
        in slices of COMMIT_WAIT_SECONDS with what waits committed before each, so that an
        acknowledgement made meanwhile is committed within a slice, not after the whole wait (the last
        batch before an idle spell would otherwise stay uncommitted, and be redelivered after a crash,
        for as long as the claim waits)."""
        deadline = time.monotonic() + block_timeout
        while True:
            self._commit()
            first = self._consumer.poll(min(COMMIT_WAIT_SECONDS, max(0.0, deadline - time.monotonic())))
            if first is not None:
                break
            if self._closed or time.monotonic() >= deadline:
                return []
        received = [first, *(self._consumer.consume(max_count - 1, 0) if max_count > 1 else [])]
        return [message for message in received if not _failed(message)]

    def _commit(self, wait: bool = False) -> None:
        """Send the offsets that became contiguous (asynchronously unless `wait`). librdkafka sends
        commits in order; a failed one is retried."""
        with self._lock:
            wanted, self._to_commit = self._to_commit, {}
            self._sent.update(wanted)
        if not wanted:
            return
        offsets = [TopicPartition(t, partition, offset) for (t, partition), offset in wanted.items()]
        try:
            if wait:
                self._consumer.commit(offsets=offsets, asynchronous=False)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as error:
            log.warning("committing Kafka offsets failed (%s); retrying later", error)
            self._retry(wanted)

    def _committed(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's answer to an asynchronous commit (on the polling thread)."""
        failed = {(tp.topic, tp.partition): tp.offset for tp in partitions if error or tp.error}
        if failed:
            log.warning("committing Kafka offsets failed (%s); retrying later", error or partitions[0].error)
            self._retry(failed)

    def _retry(self, offsets: dict[Partition, int]) -> None:
        """Commit these again at the next chance, unless a newer offset was sent or waits already, or
        the partition went to another consumer."""
        with self._lock:
            for partition, offset in offsets.items():
                if partition in self._progress and self._sent.get(partition) == offset:
                    self._to_commit.setdefault(partition, offset)

    async def _send_dead_letters(self, batch: KafkaBatch, dead_letters: Sequence[DeadLetter]) -> None:
        if not dead_letters:
            return
        errors: list[KafkaError] = []

        def report(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                errors.append(error)

        keys = dict(zip(batch.messages, batch.keys, strict=True))
        try:
            for message, reason in dead_letters:
                record = dead_letter_record(self.codec.peek(message), message, reason)
                self._producer.produce(self.dead_letter_topic, record, keys.get(message), on_delivery=report)
        except (BufferError, KafkaException) as error:
            raise KafkaUnavailable(f"Kafka refused a dead letter: {error}") from None
        left = await asyncio.to_thread(self._producer.flush, DELIVERY_TIMEOUT_SECONDS)
        if left or errors:
            raise KafkaUnavailable(f"Kafka did not take {left + len(errors)} dead letters: {errors[:1]}")

    def _lag(self) -> dict[Partition, int]:
        """Per assigned partition: its end offset minus the position of the next message to claim
        (the committed offset until one is claimed; the partition's start if none is committed).

        The end is the larger of the broker's answer now and the one of the last fetch: both can only
        be short of it (the last fetch is old while paused; some brokers' ListOffsets lag behind)."""
        positions = self._consumer.position(self._consumer.assignment())
        unknown = [tp for tp in positions if tp.offset < 0]
        if unknown:
            try:
                positions = [tp for tp in positions if tp.offset >= 0]
                positions += self._consumer.committed(unknown, timeout=2)
            except KafkaException as error:
                log.warning("cannot read the committed offsets of %s: %s", self.topic, error)
        lags = {}
        for tp in positions:
            try:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=2, cached=False)
            except KafkaException as error:
                log.warning("cannot read the end of %s[%d]: %s", tp.topic, tp.partition, error)
                continue
            fetched = self._consumer.get_watermark_offsets(tp, cached=True)
            end = max(high, fetched[1] if fetched else -1)
            lags[(tp.topic, tp.partition)] = max(0, end - (tp.offset if tp.offset >= 0 else low))
        return lags

    def _pause(self) -> None:
        self._paused = True
        self._consumer.pause(self._consumer.assignment())

    def _resume(self) -> None:
        self._paused = False
        self._consumer.resume(self._consumer.assignment())

    def _poll_paused(self) -> None:
        """Poll while paused (rebalances, commits, statistics, membership). A message can still come,
        of a partition assigned meanwhile: it is kept for the next claim and its partition paused."""
        for message in self._receive(1, PAUSED_POLL_SECONDS):
            with self._lock:
                self._held.append(message)
            self._consumer.pause([TopicPartition(*self._partition_of(message))])

    def _partition_of(self, message: Message) -> Partition:
        return (message.topic() or self.topic, message.partition() or 0)

    def _statistics(self, report: str) -> None:
        partitions = json.loads(report).get("topics", {}).get(self.topic, {}).get("partitions", {})
        self.prefetched = sum(p.get("fetchq_cnt", 0) for key, p in partitions.items() if key != "-1")

    def _next_generation(self) -> int:
        self._generation += 1
        return self._generation

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            for tp in partitions:
                self._progress[(tp.topic, tp.partition)] = _Progress(self._next_generation())
        # Assigned, and paused or resumed, explicitly, so that a partition's pause never outlives the
        # pipeline's (a partition given back by a rebalance may carry the pause it had before).
        consumer.assign(partitions)
        if self._paused:  # assigned while the pipeline is full: start paused
            consumer.pause(partitions)
        else:
            consumer.resume(partitions)
        log.info("assigned partitions %s of %s", sorted(tp.partition for tp in partitions), self.topic)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what is done of the partitions going away (their in-flight batches will be
        redelivered to the next owner), and forget them."""
        ready = []
        with self._lock:
            gone = {(tp.topic, tp.partition) for tp in partitions}
            self._held = [m for m in self._held if self._partition_of(m) not in gone]
            for tp in partitions:
                self._progress.pop((tp.topic, tp.partition), None)
                self._sent.pop((tp.topic, tp.partition), None)
                offset = self._to_commit.pop((tp.topic, tp.partition), None)
                if offset is not None:
                    ready.append(TopicPartition(tp.topic, tp.partition, offset))
        if ready:
            try:
                consumer.commit(offsets=ready, asynchronous=False)
            except KafkaException as error:
                log.warning("committing the offsets of revoked partitions failed: %s", error)
        log.info("partitions %s of %s revoked", sorted(tp.partition for tp in partitions), self.topic)


def _failed(message: Message) -> bool:
    error = message.error()
    if error is None:
        return False
    if error.code() != KafkaError._PARTITION_EOF:
        log.error("Kafka consumer error: %s", error)
    return True
