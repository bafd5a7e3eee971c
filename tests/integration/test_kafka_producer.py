"""The Kafka enqueuer against a real Kafka-protocol broker (tansu): format, keys, order, failures."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer

from plugin_server.config import Settings, load_settings
from plugin_server.ingestion.enqueue import CapturedEvent
from plugin_server.ingestion.kafka_config import kafka_config
from plugin_server.ingestion.kafka_producer import (
    DeliveryReports,
    KafkaDeliveryError,
    KafkaEnqueuer,
    Record,
    kafka_ready,
    producer_config,
)
from tests.kafka_broker import KafkaBroker, free_port, read_topic, unique_topic


def kafka_settings(bootstrap: str, **overrides: Any) -> Settings:
    values = {"KAFKA_FLUSH_FREQUENCY_MS": 5, "KAFKA_CONSUMPTION_TOPIC": unique_topic("events")}
    return load_settings({}, KAFKA_ENABLED=True, KAFKA_HOSTS=bootstrap, **{**values, **overrides})


def captured(distinct_id: str, number: int, *, team_id: int = 2, sent_at: str | None = None) -> CapturedEvent:
    return CapturedEvent(
        distinct_id=distinct_id,
        ip="127.0.0.1",
        site_url="http://localhost:8000",
        data={"event": f"event {number}", "properties": {"number": number, "ünï": "çødé"}, "offset": 5},
        team_id=team_id,
        now="2021-06-01T12:00:00.000000+00:00",
        sent_at=sent_at,
        uuid=f"0179c7a2-1a4f-0000-{number:04x}-000000000000",
    )


async def test_events_arrive_in_the_capture_format_keyed_by_team_and_distinct_id(kafka: str) -> None:
    settings = kafka_settings(kafka)
    enqueuer = KafkaEnqueuer(settings)
    events = [captured("alice", 0, sent_at="2021-06-01T11:59:59.500000+00:00")]
    events += [captured(f"person {number % 3}", number, team_id=2 + number % 2) for number in range(1, 40)]
    events.append(
        CapturedEvent("bob", None, None, {"event": "$pageview"}, 3, "2021-06-01T12:00:01Z", None, "u")
    )
    try:
        await enqueuer.enqueue(events)
    finally:
        await enqueuer.close()

    messages = read_topic(kafka, settings.KAFKA_CONSUMPTION_TOPIC, len(events))
    assert len(messages) == len(events)
    by_uuid = {json.loads(message.value() or b"")["uuid"]: message for message in messages}
    for event in events:
        message = by_uuid[event.uuid]
        value = json.loads(message.value() or b"")
        assert value == {
            "uuid": event.uuid,
            "distinct_id": event.distinct_id,
            "ip": event.ip,
            "site_url": event.site_url,
            "data": value["data"],
            "team_id": event.team_id,
            "now": event.now,
            "sent_at": event.sent_at or "",  # PostHog capture wrote "" for a missing sent_at
        }
        assert isinstance(value["data"], str) and json.loads(value["data"]) == event.data
        expected_key = hashlib.sha256(f"{event.team_id}:{event.distinct_id}".encode()).hexdigest()
        assert message.key() == expected_key.encode()


async def test_events_of_one_person_stay_in_order_on_one_partition(kafka: str) -> None:
    settings = kafka_settings(kafka)
    enqueuer = KafkaEnqueuer(settings)
    people = [f"person {number}" for number in range(8)]
    try:
        for round_ in range(5):  # several calls, each with several events per person
            await enqueuer.enqueue(
                [captured(person, round_ * 10 + step) for step in range(3) for person in people]
            )
    finally:
        await enqueuer.close()

    messages = read_topic(kafka, settings.KAFKA_CONSUMPTION_TOPIC, 5 * 3 * len(people))
    partitions: dict[str, set[int | None]] = {}
    numbers: dict[str, list[int]] = {}
    for message in messages:  # partition, then offset order
        value = json.loads(message.value() or b"")
        partitions.setdefault(value["distinct_id"], set()).add(message.partition())
        numbers.setdefault(value["distinct_id"], []).append(json.loads(value["data"])["properties"]["number"])
    assert all(len(found) == 1 for found in partitions.values()), partitions
    expected = [round_ * 10 + step for round_ in range(5) for step in range(3)]
    assert numbers == {person: expected for person in people}
    assert len({partition for found in partitions.values() for partition in found}) > 1  # really spread


async def test_enqueue_returns_only_after_the_broker_acknowledged(kafka: str) -> None:
    # With a 1.5 s linger librdkafka holds the message that long before sending it: an enqueue that
    # returned on handing the message over would be fast.
    settings = kafka_settings(kafka, KAFKA_FLUSH_FREQUENCY_MS=1500)
    enqueuer = KafkaEnqueuer(settings)
    try:
        await enqueuer.enqueue([captured("warm-up", 0)])  # connects and creates the topic
        started = time.monotonic()
        await enqueuer.enqueue([captured("alice", 1)])
        assert time.monotonic() - started >= 1.4
    finally:
        await enqueuer.close()
    assert len(read_topic(kafka, settings.KAFKA_CONSUMPTION_TOPIC, 2)) == 2


async def test_a_broker_that_goes_down_makes_enqueue_raise_within_the_delivery_timeout() -> None:
    with KafkaBroker() as broker:
        settings = kafka_settings(broker.bootstrap)
        enqueuer = KafkaEnqueuer(settings, delivery_timeout=2.0)
        await enqueuer.enqueue([captured("alice", 1)])
        assert await kafka_ready(settings) is None
    started = time.monotonic()
    with pytest.raises(KafkaDeliveryError, match="did not take 2 of 2 records"):
        await enqueuer.enqueue([captured("alice", 2), captured("bob", 3)])
    assert time.monotonic() - started < 5
    problem = await kafka_ready(settings, timeout=1.0)
    assert problem is not None and broker.bootstrap in problem
    await enqueuer.close()


async def test_enqueue_raises_when_no_broker_ever_answered() -> None:
    settings = kafka_settings(f"127.0.0.1:{free_port()}")
    enqueuer = KafkaEnqueuer(settings, delivery_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(KafkaDeliveryError, match="timed out"):
        await enqueuer.enqueue([captured("alice", 1)])
    assert time.monotonic() - started < 4
    await enqueuer.close()


async def test_kafka_ready_without_hosts_says_what_is_missing() -> None:
    problem = await kafka_ready(load_settings({}, KAFKA_ENABLED=True))
    assert problem is not None and "KAFKA_HOSTS" in problem


def make_certificates(folder: Path) -> None:
    """A CA, and a broker and a client certificate signed by it, as PEM files in `folder`."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    new_key = ["-newkey", "rsa:2048", "-nodes", "-days", "2"]
    openssl("req", "-x509", *new_key, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test CA")
    for name in ("broker", "client"):
        openssl("req", *new_key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        sign = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"]
        openssl("x509", "-req", "-in", f"{name}.csr", *sign, "-out", f"{name}.pem")


class TlsProxy:
    """A TLS front for a plaintext broker that demands a client certificate signed by the CA."""

    def __init__(self, folder: Path, target_port: int, port: int) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(folder / "ca.pem"))
        self.context.load_cert_chain(folder / "broker.pem", folder / "broker.key")
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.port = port
        self.target_port = target_port
        self.clients: list[str] = []  # common names of the client certificates seen
        self._writers: list[asyncio.StreamWriter] = []

    async def serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._connection, "127.0.0.1", self.port, ssl=self.context)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        subject = dict(part[0] for part in writer.get_extra_info("peercert")["subject"])
        self.clients.append(subject["commonName"])
        broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, broker_writer]
        await asyncio.gather(_pipe(reader, broker_writer), _pipe(broker_reader, writer))

    def close_connections(self) -> None:
        for writer in self._writers:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def test_events_go_over_tls_with_the_base64_certificates(tmp_path: Path) -> None:
    make_certificates(tmp_path)

    def b64(name: str) -> str:
        return base64.b64encode((tmp_path / name).read_bytes()).decode()

    proxy_port = free_port()
    with KafkaBroker(advertised=f"127.0.0.1:{proxy_port}") as broker:
        proxy = TlsProxy(tmp_path, broker.port, proxy_port)
        async with await proxy.serve():
            settings = kafka_settings(
                f"127.0.0.1:{proxy_port}",
                KAFKA_CLIENT_CERT_B64=b64("client.pem"),
                KAFKA_CLIENT_CERT_KEY_B64=b64("client.key"),
                KAFKA_TRUSTED_CERT_B64=b64("ca.pem"),
            )
            assert await kafka_ready(settings) is None
            enqueuer = KafkaEnqueuer(settings)
            await enqueuer.enqueue([captured("alice", 1)])
            await enqueuer.close()
            tls = kafka_config(settings)
            topic = settings.KAFKA_CONSUMPTION_TOPIC
            [message] = await asyncio.to_thread(
                read_topic, str(tls["bootstrap.servers"]), topic, 1, client=tls
            )
            proxy.close_connections()
        assert proxy.clients and set(proxy.clients) == {"client"}
    assert json.loads(message.value() or b"")["distinct_id"] == "alice"


async def test_a_failed_record_is_handed_back_whole_to_be_produced_again() -> None:
    # `send` produces again what failed for a passing reason from what librdkafka reports back: its topic,
    # value, key and headers must come back as they went in.
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "message.timeout.ms": 300})
    records = [
        Record("t", b"first", b"key", [("productTrack", b"general")]),
        Record("t", b"second"),
        Record("t", b"first", b"key", [("productTrack", b"llma")]),
        Record("t", b""),
    ]
    reports = DeliveryReports(asyncio.get_running_loop(), records)
    for record in records:
        producer.produce(
            record.topic, record.value, record.key, headers=record.headers, on_delivery=reports.report
        )
    await asyncio.to_thread(producer.flush, 5)
    await asyncio.wait_for(reports.done, 5)
    assert sorted(record for record, _ in reports.failed) == sorted(records)
    assert {error.code() for _, error in reports.failed} == {KafkaError._MSG_TIMED_OUT}


def _bytes_sent(settings: Settings, topic: str, values: list[bytes]) -> int:
    """Produce `values` with the server's producer settings; the bytes librdkafka sent to the broker."""
    reports: list[dict[str, Any]] = []
    config = {**producer_config(settings, 10.0), "statistics.interval.ms": 50}
    producer = Producer({**config, "stats_cb": lambda text: reports.append(json.loads(text))})
    for number, value in enumerate(values):
        producer.produce(topic, value, str(number).encode())
    assert producer.flush(10) == 0
    reports.clear()
    deadline = time.monotonic() + 10
    while not reports and time.monotonic() < deadline:
        producer.poll(0.1)
    assert reports, "librdkafka sent no statistics"
    return sum(broker["txbytes"] for broker in reports[-1]["brokers"].values())


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_records_arrive_whole_with_every_compression_codec(kafka: str, codec: str) -> None:
    settings = kafka_settings(kafka, KAFKA_COMPRESSION_CODEC=codec)
    topic = unique_topic("compressed")
    values = [
        json.dumps({"event": "$pageview", "n": n, "url": f"https://example.com/{n % 7}"}).encode()
        for n in range(300)
    ]
    sent = _bytes_sent(settings, topic, values)
    assert sorted(message.value() for message in read_topic(kafka, topic, len(values))) == sorted(values)
    if codec != "none":  # the same records in fewer bytes on the wire than uncompressed
        plain = _bytes_sent(
            kafka_settings(kafka, KAFKA_COMPRESSION_CODEC="none"), unique_topic("plain"), values
        )
        assert sent < plain / 2
