"""The direct writer on chDB: with EVENT_STORE=clickhouse-direct a pipeline (Celery messages in) stores
into ClickHouse the very records the Kafka sinks would produce, through the Kafka tables' views (Null
tables here): events, recordings, and the persons, distinct ids and groups Postgres committed, in the
original's formats and in today's. A batch delivered again collapses into the first (FINAL)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings
from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.kafka_producer import Record
from plugin_server.ingestion.persons import PersonRow
from plugin_server.sinks.clickhouse.client import AsyncClickHouse
from plugin_server.sinks.clickhouse.topics import ClickHouseTopicWriter
from plugin_server.sinks.kafka.original import OriginalFormat
from plugin_server.topology import Sinks, open_sinks
from tests.integration.test_kafka_sinks import run_batches
from tests.pipelines import message, pipeline

Db = psycopg.Connection[Any]


@pytest.fixture
async def direct(
    request: pytest.FixtureRequest, clickhouse_settings: Settings, pool: AsyncConnectionPool[Any]
) -> AsyncIterator[Sinks]:
    """The direct writer's sinks in the format the test is parametrized with (default: original)."""
    settings = clickhouse_settings.model_copy(
        update={
            "EVENT_STORE": "clickhouse-direct",
            "CLICKHOUSE_KAFKA_FORMAT": getattr(request, "param", "original"),
        }
    )
    async with open_sinks(settings, pool) as sinks:
        yield sinks


def rows(client: Client, sql: str) -> list[tuple[Any, ...]]:
    return list(client.query(sql).result_rows)


@pytest.mark.parametrize("direct", ["original", "current"], indirect=True)
async def test_a_pipeline_run_stores_everything_into_clickhouse_once(
    direct: Sinks,
    clickhouse: Client,
    pool: AsyncConnectionPool[Any],
    team: CreatedTeam,
    clean_db: Db,
    request: pytest.FixtureRequest,
) -> None:
    await run_batches(pool, team, clean_db, direct)
    person = await run_batches(pool, team, clean_db, direct)  # every batch delivered again
    uuid = str(person["uuid"])
    events = rows(clickhouse, "SELECT event, distinct_id, elements_chain FROM events FINAL ORDER BY event")
    assert events == [
        ("$autocapture", "anon", 'a:nth-child="1"nth-of-type="2"'),
        ("$groupidentify", "user", ""),
        ("$identify", "user", ""),
        ("$pageview", "user", ""),
    ]
    assert rows(clickhouse, "SELECT count() FROM events") >= [(8,)]  # both deliveries, before merging
    persons = rows(
        clickhouse, "SELECT toString(id), properties, is_deleted FROM person FINAL WHERE is_deleted = 0"
    )
    assert [(found, orjson.loads(properties)) for found, properties, _ in persons] == [
        (uuid, person["properties"])
    ]
    groups = rows(clickhouse, "SELECT group_type_index, group_key, group_properties FROM groups FINAL")
    assert groups == [(0, "ph", '{"n":1}')]
    assert rows(clickhouse, "SELECT session_id FROM session_recording_events FINAL") == [("s1",)]
    if request.node.callspec.params["direct"] == "original":
        owners = "SELECT distinct_id, toString(person_id) FROM person_distinct_id FINAL ORDER BY distinct_id"
    else:
        owners = "SELECT distinct_id, toString(person_id) FROM person_distinct_id2 FINAL WHERE is_deleted = 0 ORDER BY distinct_id"
        [(person_id, person_properties)] = rows(
            clickhouse,
            "SELECT toString(person_id), person_properties FROM events FINAL WHERE event = '$identify'",
        )
        assert (person_id, orjson.loads(person_properties)["b"]) == (uuid, 2)
    assert rows(clickhouse, owners) == [("anon", uuid), ("user", uuid)]


async def test_an_unknown_topic_is_an_error(
    direct: Sinks, clickhouse_settings: Settings, clickhouse: Client
) -> None:
    writer = ClickHouseTopicWriter.for_settings(AsyncClickHouse(clickhouse), clickhouse_settings)
    with pytest.raises(ValueError, match="no ClickHouse table reads the topic 'elsewhere'"):
        await writer.send([Record("elsewhere", b"{}")])


async def test_hostile_text_is_stored_as_postgres_would(
    direct: Sinks, clickhouse: Client, pool: AsyncConnectionPool[Any], team: CreatedTeam
) -> None:
    """NUL characters, lone surrogates, quotes and backslashes, big numbers: stored as scrubbed text, not
    a failed batch (the same rules as for Postgres)."""
    data = {
        "event": "e\x00v'\\\"ent<HIGH>",
        "properties": {"nul\x00key": "a\x00b", "lone": "<LOW>x", "big": 2**63 - 1, "deep": [[{"k": "é😀"}]]},
    }
    envelope = orjson.loads(message(team.team_id, "d'\"\\<HIGH>", data["event"], data["properties"]))
    body = base64.b64decode(envelope["body"]).replace(b"<HIGH>", b"\\ud83d").replace(b"<LOW>", b"\\udc00")
    envelope["body"] = base64.b64encode(body).decode()  # lone surrogates, as JSON escapes them
    outcome = await pipeline(pool, direct.events, direct.persons).run([orjson.dumps(envelope)])
    assert (outcome.stored, outcome.dead_letters) == (1, [])
    [(event, distinct_id, properties)] = clickhouse.query(
        "SELECT event, distinct_id, properties FROM events FINAL"
    ).result_rows
    assert (event, distinct_id) == ("ev'\\\"ent\ufffd", "d'\"\\\ufffd")
    stored = orjson.loads(properties)
    assert (stored["nulkey"], stored["lone"], stored["big"], stored["deep"]) == (
        "ab",
        "\ufffdx",
        2**63 - 1,
        [[{"k": "é😀"}]],
    )


class CountingClickHouse(AsyncClickHouse):
    """The real client, counting its INSERTs."""

    inserts = 0

    async def raw_insert(self, *args: Any, **kwargs: Any) -> None:
        self.inserts += 1
        await super().raw_insert(*args, **kwargs)


def person_record(number: int) -> Record:
    person = PersonRow(
        number, f"0190b2a0-0000-7000-8000-{number:012x}", 2, datetime(2026, 1, 1, tzinfo=UTC), {}, False
    )
    [record] = OriginalFormat().row_records(person)
    return record


async def test_batches_stored_at_once_share_an_insert(
    clickhouse_settings: Settings, clickhouse: Client
) -> None:
    counting = CountingClickHouse(clickhouse)
    writer = ClickHouseTopicWriter.for_settings(counting, clickhouse_settings)
    await asyncio.gather(*(writer.send([person_record(number)]) for number in range(5)))
    await writer.close()
    assert counting.inserts < 5
    assert rows(clickhouse, "SELECT count(), uniqExact(id) FROM person FINAL") == [(5, 5)]


async def test_a_bad_batch_in_a_shared_insert_fails_alone(
    clickhouse_settings: Settings, clickhouse: Client
) -> None:
    writer = ClickHouseTopicWriter.for_settings(AsyncClickHouse(clickhouse), clickhouse_settings)
    bad = Record(person_record(0).topic, b"{not json")
    stored = await asyncio.gather(
        writer.send([person_record(1)]),
        writer.send([bad]),
        writer.send([person_record(2)]),
        return_exceptions=True,
    )
    await writer.close()
    assert stored[0] is None and stored[2] is None
    assert isinstance(stored[1], ClickHouseError)
    assert rows(clickhouse, "SELECT count() FROM person FINAL") == [(2,)]
