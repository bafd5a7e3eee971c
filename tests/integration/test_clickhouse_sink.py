"""The direct writer on chDB: with EVENT_STORE=clickhouse-direct the pipeline (Celery messages in) stores its
events in ClickHouse's `events` and recordings in `session_recording_events`, in the original's row
shape; a message delivered again collapses into the first (FINAL)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson
import pytest
from clickhouse_connect.driver.client import Client
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings
from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.pipeline import EventPipeline
from plugin_server.sinks.clickhouse.events import ClickHouseEventSink
from plugin_server.sinks.postgres import PostgresEventSink
from plugin_server.topology import open_sinks
from tests.integration.test_pipeline import message, pipeline

AUTOCAPTURE = {
    "event": "$autocapture",
    "properties": {
        "$elements": [
            {
                "tag_name": "a",
                "attr__href": "/signup",
                "$el_text": "Sign up",
                "nth_child": 1,
                "nth_of_type": 2,
            },
            {"tag_name": "div", "attr__class": "hero big"},
        ]
    },
}


@pytest.fixture
async def clickhouse_pipeline(
    clickhouse: Client, clickhouse_settings: Settings, pool: AsyncConnectionPool[Any]
) -> AsyncIterator[EventPipeline]:
    settings = clickhouse_settings.model_copy(update={"EVENT_STORE": "clickhouse-direct"})
    async with open_sinks(settings, pool) as sinks:
        built = pipeline(pool)
        built.sink = sinks.events
        yield built


async def test_the_pipeline_stores_events_and_recordings_in_clickhouse(
    clickhouse_pipeline: EventPipeline, clickhouse: Client, team: CreatedTeam
) -> None:
    assert isinstance(clickhouse_pipeline.sink, ClickHouseEventSink)
    snapshot = {"event": "$snapshot", "properties": {"$session_id": "s-1", "$snapshot_data": {"type": 2}}}
    pageview = {
        "event": "$pageview",
        "properties": {"price": 3.5, "$elements_chain": 'a:href="/sent"'},
        "timestamp": "2021-11-28T09:59:00.123456Z",
    }
    outcome = await clickhouse_pipeline.run(
        [
            message(team.team_id, "user-1", pageview),
            message(team.team_id, "user-1", AUTOCAPTURE),
            message(team.team_id, "user-1", snapshot),
        ]
    )
    assert (outcome.stored, outcome.dead_letters) == (3, [])
    stored = clickhouse.query(
        "SELECT event, team_id, distinct_id, properties, elements_chain, timestamp, _timestamp FROM events FINAL ORDER BY timestamp"
    ).named_results()
    first, second = list(stored)
    assert (first["event"], first["team_id"], first["distinct_id"]) == ("$pageview", team.team_id, "user-1")
    assert first["timestamp"] == datetime(2021, 11, 28, 9, 59, 0, 123000)  # milliseconds, as JS dates
    # The version is the capture time `now`: the same on redelivery.
    assert first["_timestamp"] == datetime(2021, 11, 28, 10, 0)
    properties = orjson.loads(first["properties"])
    assert (properties["price"], properties["$ip"]) == (3.5, "11.12.13.14")
    assert (first["elements_chain"], "$elements_chain" in properties) == ('a:href="/sent"', False)
    assert second["event"] == "$autocapture"
    assert (
        second["elements_chain"]
        == 'a:attr__href="/signup"href="/signup"nth-child="1"nth-of-type="2"text="Sign up";'
        'div.big.hero:attr__class="hero big"nth-child="0"nth-of-type="0"'
    )
    assert "$elements" not in orjson.loads(second["properties"])
    [recording] = clickhouse.query(
        "SELECT session_id, snapshot_data, distinct_id FROM session_recording_events FINAL"
    ).result_rows
    assert recording == ("s-1", '{"type":2}', "user-1")


async def test_a_message_delivered_again_is_stored_once(
    clickhouse_pipeline: EventPipeline, clickhouse: Client, team: CreatedTeam
) -> None:
    repeated = message(team.team_id, "someone", {"event": "once"}, task_id="task-1")
    snapshot = message(
        team.team_id, "someone", {"event": "$snapshot", "properties": {"$session_id": "s"}}, task_id="task-2"
    )
    await clickhouse_pipeline.run([repeated, snapshot])
    await clickhouse_pipeline.run([repeated, snapshot])
    assert clickhouse.query("SELECT count() FROM events").result_rows == [(2,)]  # before merging
    assert clickhouse.query("SELECT count() FROM events FINAL").result_rows == [(1,)]
    assert clickhouse.query("SELECT count() FROM session_recording_events FINAL").result_rows == [(1,)]


async def test_event_sink_postgres_is_the_default(
    clickhouse_settings: Settings, pool: AsyncConnectionPool[Any]
) -> None:
    async with open_sinks(clickhouse_settings, pool) as sinks:
        assert isinstance(sinks.events, PostgresEventSink)


async def test_hostile_text_is_stored_as_postgres_would(
    clickhouse_pipeline: EventPipeline, clickhouse: Client, team: CreatedTeam
) -> None:
    """NUL characters, lone surrogates, quotes and backslashes, big numbers: stored as scrubbed text, not
    a failed batch (the same rules as for Postgres)."""
    data = {
        "event": "e\x00v'\\\"ent<HIGH>",
        "properties": {"nul\x00key": "a\x00b", "lone": "<LOW>x", "big": 2**63 - 1, "deep": [[{"k": "é😀"}]]},
    }
    envelope = orjson.loads(message(team.team_id, "d'\"\\<HIGH>", data))
    body = base64.b64decode(envelope["body"]).replace(b"<HIGH>", b"\\ud83d").replace(b"<LOW>", b"\\udc00")
    envelope["body"] = base64.b64encode(body).decode()  # lone surrogates, as JSON escapes them
    outcome = await clickhouse_pipeline.run([orjson.dumps(envelope)])
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
