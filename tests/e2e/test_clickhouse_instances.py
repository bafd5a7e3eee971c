"""Two servers with EVENT_STORE=clickhouse-kafka in one consumer group split a topic's partitions; one is
killed with SIGKILL (its whole process group) while events are being ingested, and the survivor takes
its partitions over and consumes again what the killed one had not committed. Then ClickHouse (chDB,
fed by the stand-in for its Kafka engine from the topics the servers produced to) holds every event once
after FINAL, and the persons and distinct ids Postgres holds, once the person outbox sent again what the
killed worker left unsent (the servers do it a minute later; the test runs the same step at once).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from clickhouse_connect.driver.client import Client

from plugin_server.config import Settings, load_settings
from plugin_server.db.postgres import open_pool
from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.enqueue import CapturedEvent
from plugin_server.topology import open_sinks
from tests.clickhouse_kafka_engine import copy_topics
from tests.consumer_group import assigned, captured, group_env, split_between
from tests.kafka_broker import committed, produce_captured, unique_topic

from .server import running_server, wait_until

PARTITIONS = 4
EVENTS = 6_000
PEOPLE = 400
IDENTIFIED = EVENTS // 200  # people who log in mid-stream: their anonymous person merges into their user's


def events(team_id: int) -> list[CapturedEvent]:
    """Page views of PEOPLE anonymous people, every tenth setting a person property; IDENTIFIED users
    who view a page, then identify as one of the anonymous people (a merge of two persons)."""
    made = []
    for n in range(EVENTS):
        if n % 200 == 50:
            made.append(captured(team_id, f"user-{n // 200}", "$pageview", {"$set": {"user": True}}))
        elif n % 200 == 150:
            identify = {"$anon_distinct_id": f"anon-{n // 200}", "$set": {"seen": n}}
            made.append(captured(team_id, f"user-{n // 200}", "$identify", identify))
        else:
            properties: dict[str, Any] = {"n": n} | ({"$set": {"last": n}} if n % 10 == 0 else {})
            made.append(captured(team_id, f"anon-{n % PEOPLE}", "$pageview", properties))
    return made


async def resend_outbox(settings: Settings, database_url: str) -> int:
    """What `resend_forever` does a minute after a worker died: the person rows it recorded but never
    sent, as they are now, to the topics. Answers how many were left."""
    pool = await open_pool(database_url)
    try:
        async with open_sinks(settings, pool) as sinks:
            assert sinks.outbox is not None
            left = 0
            while sent := await sinks.outbox.resend(pool, sinks.persons.write, older_than=0):
                left += sent
            return left
    finally:
        await pool.close()


def postgres_state(database_url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Live persons (uuid, properties, is_identified) and distinct ids (distinct id, person uuid)."""
    with psycopg.connect(database_url, autocommit=True) as db:
        persons = db.execute("SELECT uuid::text, properties, is_identified FROM posthog_person").fetchall()
        owners = db.execute(
            """SELECT d.distinct_id, p.uuid::text FROM posthog_persondistinctid d
               JOIN posthog_person p ON p.id = d.person_id"""
        ).fetchall()
    return sorted((uuid, properties, int(identified)) for uuid, properties, identified in persons), sorted(
        owners
    )


def clickhouse_state(client: Client) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    persons = client.query(
        "SELECT toString(id), properties, is_identified FROM person FINAL WHERE is_deleted = 0"
    ).result_rows
    owners = client.query(
        "SELECT distinct_id, toString(person_id) FROM person_distinct_id2 FINAL WHERE is_deleted = 0"
    ).result_rows
    return sorted(
        (uuid, orjson.loads(properties), identified) for uuid, properties, identified in persons
    ), sorted(owners)


@pytest.mark.parametrize("clickhouse_settings", ["current"], indirect=True)
def test_a_killed_servers_events_reach_clickhouse_once_and_persons_match_postgres(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    kafka: str,
    team: CreatedTeam,
    clickhouse: Client,
    clickhouse_settings: Settings,
) -> None:
    env = group_env(database_url, redis_url, kafka, PARTITIONS) | {
        "EVENT_STORE": "clickhouse-kafka",
        "CLICKHOUSE_KAFKA_FORMAT": "current",
        "KAFKA_PREFIX": unique_topic("chi") + "_",
        "INGESTION_BATCH_SIZE": "250",
    }
    topic, group = env["KAFKA_CONSUMPTION_TOPIC"], env["KAFKA_CONSUMER_GROUP"]

    def consumed() -> int:
        """Events whose records the broker took (a batch is committed only after that)."""
        return committed(kafka, group, topic, PARTITIONS)

    folders = [tmp_path / "one", tmp_path / "two"]
    for folder in folders:
        folder.mkdir()
    with (
        running_server(folders[0], env, process_group=True) as survivor,
        running_server(folders[1], env, process_group=True) as victim,
    ):
        wait_until(lambda: split_between(survivor, victim, PARTITIONS), timeout=60)
        sent = events(team.team_id)
        produce_captured(kafka, topic, sent)

        wait_until(lambda: consumed() >= EVENTS // 10, timeout=60)
        os.killpg(victim.process.pid, signal.SIGKILL)
        at_kill = consumed()
        assert 0 < at_kill < EVENTS, "the kill must come while events are in flight"
        victim.process.wait(10)

        wait_until(lambda: assigned(survivor) == set(range(PARTITIONS)), timeout=30)
        wait_until(lambda: consumed() >= EVENTS, timeout=60)
        assert survivor.stop() == 0

    settings = clickhouse_settings.model_copy(
        update={"KAFKA_HOSTS": kafka, "KAFKA_PREFIX": env["KAFKA_PREFIX"]}
    )
    left = asyncio.run(resend_outbox(load_settings(env), database_url))
    copied = asyncio.run(copy_topics(clickhouse, settings, expected=EVENTS, timeout=60))
    print(f"committed at the kill: {at_kill} of {EVENTS}; outbox rows sent again: {left}; records: {copied}")

    [(rows, uuids)] = clickhouse.query("SELECT count(), uniqExact(uuid) FROM events FINAL").result_rows
    assert (rows, uuids) == (EVENTS, EVENTS)  # every event once, none lost, none twice
    persons, owners = postgres_state(database_url)
    distinct_ids = {event.distinct_id for event in sent}
    assert (len(persons), len(owners)) == (len(distinct_ids) - IDENTIFIED, len(distinct_ids))
    assert clickhouse_state(clickhouse) == (persons, owners)
