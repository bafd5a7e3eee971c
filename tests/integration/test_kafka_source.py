"""The Kafka source on the real Kafka-protocol broker: both message formats into Postgres rows, dead
letters on events_dead_letter_queue, offsets committed only up to the contiguous acknowledged prefix,
and redelivery of what was not committed. Each test has its own topic and consumer group (tansu's
first assignment of a new group takes about 5 s)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka import Producer
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings, load_settings
from plugin_server.db.teams import CreatedTeam
from plugin_server.dead_letters.kafka_topic import KafkaDeadLetters
from plugin_server.ingestion.pipeline import EventPipeline
from plugin_server.ingestion.teams import TeamManager
from plugin_server.services.metrics import get_metrics
from plugin_server.sources.kafka import KafkaSource
from plugin_server.sources.kafka.dead_letters import dead_letter_record
from plugin_server.sources.kafka.source import STATISTICS_INTERVAL_MS, KafkaBatch
from tests.integration.test_pipeline import pipeline as celery_pipeline
from tests.integration.test_pipeline import rows
from tests.kafka_broker import committed, create_topic, read_topic, unique_topic

NOW = "2021-11-28T10:00:00.000Z"
Db = psycopg.Connection[Any]
# tansu hands a new group its first assignment after about half the session timeout
SESSION_TIMEOUT_MS = 6000


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        producer.produce(topic, value, b"key")
    assert producer.flush(15) == 0


def message(distinct_id: str, event: str, data: dict[str, Any] | None = None, **fields: Any) -> bytes:
    data = {"event": event, "properties": {"n": 1}, "timestamp": NOW} | (data or {})
    return orjson.dumps(
        {
            "distinct_id": distinct_id,
            "ip": None,
            "site_url": "",
            "data": orjson.dumps(data).decode(),
            "now": NOW,
        }
        | fields
    )


@pytest.fixture
async def source(kafka: str, pool: AsyncConnectionPool[Any]) -> AsyncIterator[KafkaSource]:
    topic, group = unique_topic("ingest"), unique_topic("group")
    create_topic(kafka, topic, 1)
    settings = kafka_settings(kafka, topic, group)
    kafka_source = KafkaSource(settings, TeamManager(pool))
    await kafka_source.start()
    yield kafka_source
    await kafka_source.close()


def kafka_settings(bootstrap: str, topic: str, group: str) -> Settings:
    return load_settings(
        {},
        KAFKA_ENABLED=True,
        KAFKA_HOSTS=bootstrap,
        KAFKA_CONSUMPTION_TOPIC=topic,
        KAFKA_CONSUMER_GROUP=group,
        KAFKA_DEAD_LETTER_TOPIC=f"{topic}_dead_letters",
        KAFKA_CONSUMER_SESSION_TIMEOUT_MS=SESSION_TIMEOUT_MS,
    )


async def claim_all(
    source: KafkaSource, count: int, batch_size: int, timeout: float = 30
) -> list[KafkaBatch]:
    batches: list[KafkaBatch] = []
    deadline = time.monotonic() + timeout
    while sum(len(batch.messages) for batch in batches) < count:
        assert time.monotonic() < deadline, f"only {sum(len(b.messages) for b in batches)} of {count} claimed"
        batch = await source.claim(batch_size, 0.5)
        if batch is not None:
            batches.append(batch)
    return batches


def kafka_pipeline(pool: AsyncConnectionPool[Any], source: KafkaSource) -> EventPipeline:
    built = celery_pipeline(pool)
    built.codec = source.codec
    return built


async def test_both_formats_are_stored_and_bad_messages_are_dead_letters(
    kafka: str, source: KafkaSource, pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    uuid = "017d6a3a-1000-7000-8000-000000000001"
    values = [
        message("alice", "with team id", team_id=team.team_id, uuid=uuid),
        message("bob", "with token", token=team.api_token),  # today's capture: no team_id, no uuid
        message("carol", "unknown token", token="phc_nobody"),
        message("dave", "no team"),
        b"not json",
        message("eve", "forged team in data", {"team_id": 999}, token=team.api_token),
    ]
    produce(kafka, source.topic, values)
    [batch] = await claim_all(source, len(values), 100)
    assert batch.messages == values

    outcome = await kafka_pipeline(pool, source).run(batch.messages)
    await source.ack(batch, outcome.dead_letters)
    await source.housekeeping()  # commits (else the next claim does)

    stored = rows(
        clean_db, "SELECT event, distinct_id, team_id, uuid::text FROM posthog_event ORDER BY event"
    )
    assert [(row["event"], row["distinct_id"], row["team_id"]) for row in stored] == [
        ("forged team in data", "eve", team.team_id),
        ("with team id", "alice", team.team_id),
        ("with token", "bob", team.team_id),
    ]
    assert stored[1]["uuid"] == uuid
    reasons = [reason for _, reason in outcome.dead_letters]
    assert len(reasons) == 3
    assert "no team has the token 'phc_nobody'" in reasons[0]
    assert "neither a team_id nor a token" in reasons[1]
    assert "not valid JSON" in reasons[2]

    letters = [orjson.loads(m.value() or b"") for m in read_topic(kafka, source.dead_letter_topic, 3)]
    assert [letter["raw_payload"].encode() for letter in letters] == values[2:5]
    first = letters[0]
    assert first["error_location"] == "plugin_server_ingest_event"
    assert first["error"].startswith("ingestEvent failed. Error: malformed message: no team has the token")
    assert first["distinct_id"] == "carol" and first["event"] == "unknown token"
    assert first["now"] == "2021-11-28 10:00:00" and orjson.loads(first["properties"]) == {"n": 1}
    assert "sent_at" not in first and "timestamp" not in first and first["id"]
    assert committed(kafka, source.group_id, source.topic) == len(values)


async def test_redelivered_messages_keep_their_uuid_and_are_stored_once(
    kafka: str, source: KafkaSource, pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    produce(kafka, source.topic, [message("bob", "no uuid", token=team.api_token)])
    [batch] = await claim_all(source, 1, 10)
    built = kafka_pipeline(pool, source)
    await built.run(batch.messages)
    await built.run(batch.messages)  # a redelivery after a crash before the commit
    assert len(rows(clean_db, "SELECT uuid FROM posthog_event")) == 1


async def test_offsets_are_committed_up_to_the_contiguous_acknowledged_prefix(
    kafka: str, source: KafkaSource
) -> None:
    produce(kafka, source.topic, [message(f"p{i}", "e", team_id=1) for i in range(6)])
    batches: list[KafkaBatch] = []
    for _ in range(3):  # three batches of two, claimed in order
        batches += await claim_all(source, 2, 2)
    assert [len(batch.messages) for batch in batches] == [2, 2, 2]
    group = source.group_id

    await source.ack(batches[2])
    await source.ack(batches[1])
    await source.housekeeping()
    assert committed(kafka, group, source.topic) == 0  # nothing: the first batch is still in flight
    await source.ack(batches[0])
    assert await source.claim(10, 0.1) is None  # the claiming thread sends what waits to be committed
    await until(lambda: committed(kafka, group, source.topic) == 6, timeout=10)


async def test_an_acknowledgement_made_while_a_claim_waits_is_committed_at_once(
    kafka: str, source: KafkaSource
) -> None:
    produce(kafka, source.topic, [message(f"p{i}", "e", team_id=1) for i in range(2)])
    [batch] = await claim_all(source, 2, 2)
    waiting = asyncio.create_task(source.claim(10, 30))  # nothing more comes: it waits the 30 s
    await asyncio.sleep(0.5)  # the claim's thread is polling
    await source.ack(batch)
    # before: only once the claim's 30 s wait was over
    await until(lambda: committed(kafka, source.group_id, source.topic) == 2, timeout=15)
    assert not waiting.done()
    waiting.cancel()  # closing the source ends the wait


async def test_consumer_lag_is_sampled_per_assigned_partition(kafka: str, source: KafkaSource) -> None:
    for i in range(5):  # one record batch each: tansu's end offset counts record batches
        produce(kafka, source.topic, [message(f"p{i}", "e", team_id=1)])
    await claim_all(source, 2, 2)
    await source.housekeeping()
    get = get_metrics().registry.get_sample_value
    assert get("plugin_server_kafka_consumer_lag", {"topic": source.topic, "partition": "0"}) == 3


async def test_what_was_not_committed_is_delivered_again_to_the_next_consumer(
    kafka: str, pool: AsyncConnectionPool[Any]
) -> None:
    topic, group = unique_topic("ingest"), unique_topic("group")
    create_topic(kafka, topic, 1)
    values = [message(f"p{i}", "e", team_id=1) for i in range(4)]
    produce(kafka, topic, values)
    first = KafkaSource(kafka_settings(kafka, topic, group), TeamManager(pool))
    await first.start()
    [done, *_] = await claim_all(first, 4, 2)
    await first.ack(done)
    await first.close()  # the second batch was claimed, never acknowledged

    second = KafkaSource(kafka_settings(kafka, topic, group), TeamManager(pool))
    await second.start()
    try:
        again = await claim_all(second, 2, 10)
        assert [m for batch in again for m in batch.messages] == values[2:]
        assert await second.claim(10, 0.5) is None
    finally:
        await second.close()


async def test_dead_letters_on_the_topic_are_listed_counted_and_replayed_once(kafka: str) -> None:
    settings = kafka_settings(kafka, unique_topic("ingest"), unique_topic("group"))
    create_topic(kafka, settings.KAFKA_DEAD_LETTER_TOPIC, 1)
    originals = [message(f"p{i}", "e", token=f"phc_{i}") for i in range(3)]
    records = [dead_letter_record(None, original, f"reason {i}") for i, original in enumerate(originals)]
    produce(kafka, settings.KAFKA_DEAD_LETTER_TOPIC, records)
    store = KafkaDeadLetters(settings)

    assert await store.count() == 3
    newest = await store.newest(10)
    assert {letter["message"].encode() for letter in newest} == set(originals)
    assert sorted(letter["reason"] for letter in newest)[0] == "ingestEvent failed. Error: reason 0"

    assert await store.replay(2) == 2
    assert await store.count() == 1
    assert await store.replay() == 1
    assert await store.replay() == 0
    replayed = read_topic(kafka, settings.KAFKA_CONSUMPTION_TOPIC, 3)
    assert [m.value() for m in replayed] == originals
    assert [m.key() for m in replayed] == [b"key"] * 3


async def test_a_full_pipeline_pauses_the_consumer_and_drops_what_it_fetched_ahead(
    kafka: str, source: KafkaSource
) -> None:
    """While no batch is acknowledged and the worker waits for room, librdkafka would keep up to
    16 MB of the topic fetched ahead; paused, it holds none, and after the pause nothing is lost."""
    total = 20_000
    produce(kafka, source.topic, [message(f"p{i}", "e", {"pad": "x" * 400}, team_id=1) for i in range(total)])
    claimed = await claim_all(source, 100, 100)  # the pipeline's batches, never acknowledged
    await asyncio.sleep(2 * STATISTICS_INTERVAL_MS / 1000)  # librdkafka fetches ahead meanwhile
    claimed += await claim_all(source, 1, 1)  # a poll: serves librdkafka's statistics
    assert source.prefetched > 5_000

    room = asyncio.Event()
    waiting = asyncio.create_task(source.paused_until(room.wait()))
    await until(lambda: source.prefetched == 0, timeout=10)
    seen = []
    for _ in range(20):  # still paused: what the consumer holds stays what the pipeline holds
        await asyncio.sleep(0.1)
        seen.append(source.prefetched)
    assert seen == [0] * 20 and not waiting.done()

    room.set()
    await waiting
    claimed += await claim_all(source, total - 101, 1000)
    offsets = [offset for batch in claimed for _, offset, _ in batch.positions]
    assert sorted(offsets) == list(range(total))  # each once: none dropped or doubled by the pause


async def until(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_rebalance_during_a_pause_leaves_no_partition_paused(
    kafka: str, pool: AsyncConnectionPool[Any]
) -> None:
    """A second consumer joins while the first is paused (its pipeline full); once the first has room
    again, every message of its new share comes to it, the one it had claimed before included."""
    topic, group = unique_topic("ingest"), unique_topic("group")
    create_topic(kafka, topic, 2)
    producer = Producer({"bootstrap.servers": kafka})
    for n in range(400):
        producer.produce(topic, message(f"p{n}", "e", team_id=1), partition=n % 2)
    assert producer.flush(15) == 0
    settings = kafka_settings(kafka, topic, group)
    first, second = KafkaSource(settings, TeamManager(pool)), KafkaSource(settings, TeamManager(pool))
    await first.start()
    try:
        await claim_all(first, 1, 1)  # never acknowledged: claimed again after the rebalance
        room = asyncio.Event()
        waiting = asyncio.create_task(first.paused_until(room.wait()))
        await second.start()
        [batch] = await claim_all(second, 1, 1, timeout=60)  # the rebalance is over
        (_, theirs), _, _ = batch.positions[0]
        room.set()
        await waiting
        claimed = await claim_all(first, 200, 1000)
    finally:
        await first.close()
        await second.close()
    positions = {(partition, offset) for batch in claimed for (_, partition), offset, _ in batch.positions}
    assert positions == {(1 - theirs, offset) for offset in range(200)}
