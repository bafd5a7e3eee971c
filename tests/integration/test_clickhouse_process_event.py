"""The original's ClickHouse-mode process-event cases (reference: original-behaviour.md 4.2-4.5), as the
rows they leave in ClickHouse: a pipeline run with the direct writer into chDB (the same records as
through Kafka), in the original's formats and in today's, read back with FINAL."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
import pytest
from clickhouse_connect.driver.client import Client
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.celery import PROCESS_EVENT_TASK, encode_task
from plugin_server.topology import Sinks
from tests.integration.test_clickhouse_sink import direct, rows
from tests.pipelines import EVENT_TIME, NOW, pipeline

__all__ = ["direct"]  # the direct writer's sinks, a fixture

Db = psycopg.Connection[Any]


def task(
    team_id: int, distinct_id: str, data: dict[str, Any], *, now: str = NOW, sent_at: str | None = NOW
) -> bytes:
    """A Celery process_event message from 1.2.3.4 with this `data` (event, properties, timestamp...)."""
    args = [distinct_id, "1.2.3.4", "http://example.com", data, team_id, now, sent_at]
    return encode_task(PROCESS_EVENT_TASK, args, queue="posthog-plugins")


@pytest.mark.parametrize("direct", ["original", "current"], indirect=True)
async def test_the_original_process_event_cases_give_these_clickhouse_rows(
    direct: Sinks,
    clickhouse: Client,
    pool: AsyncConnectionPool[Any],
    team: CreatedTeam,
    clean_db: Db,
    request: pytest.FixtureRequest,
) -> None:
    team_id = team.team_id
    click = {
        "utm_medium": "email",
        "$browser": "Chrome",
        "$current_url": "https://example.com/b",
        "$set": {"plan": "pro"},
        "$set_once": {"first": 1},
        "$elements": [
            {
                "tag_name": "a",
                "$el_text": "Click",
                "attr__class": "primary btn",
                "attr__href": "/x",
                "nth_child": 1,
                "nth_of_type": 0,
            }
        ],
    }
    first = [
        task(team_id, "new", {"event": "$autocapture", "properties": click, "timestamp": EVENT_TIME}),
        task(team_id, "old", {"event": "seen", "properties": {"$set": {"plan": "free", "old": True}}}),
        # no timestamp: now - offset
        task(team_id, "new", {"event": "offset", "properties": {}, "offset": 150}),
        # the client's clock 5 s ahead: now + (timestamp - sent_at)
        task(
            team_id,
            "new",
            {"event": "skewed", "properties": {}, "timestamp": "2021-11-28T10:00:05.000Z"},
            sent_at="2021-11-28T10:00:10.000Z",
        ),
        task(team_id, "new", {"event": "x" * 300, "properties": {}, "timestamp": EVENT_TIME}),
        task(
            team_id,
            "viewer",
            {"event": "$snapshot", "properties": {"$session_id": "s", "$snapshot_data": {"t": 1}}},
        ),
    ]
    second = [
        task(team_id, "new", {"event": "again", "properties": {"$set_once": {"first": 2}}}),
        task(team_id, "new", {"event": "$identify", "properties": {"$anon_distinct_id": "old"}}),
    ]
    run = pipeline(pool, direct.events, direct.persons, direct.outbox).run
    for batch in (first, second):
        outcome = await run(batch)
        assert outcome.dead_letters == []

    events = {
        event: (distinct_id, timestamp, chain, orjson.loads(properties))
        for event, distinct_id, timestamp, chain, properties in rows(
            clickhouse,
            "SELECT event, distinct_id, toString(timestamp), elements_chain, properties FROM events FINAL",
        )
    }
    assert set(events) == {"$autocapture", "seen", "offset", "skewed", "x" * 200, "again", "$identify"}
    _, timestamp, chain, properties = events["$autocapture"]
    assert timestamp == "2021-11-28 09:59:58.123000"
    # tag, sorted classes, then every attribute sorted by key (href is attr__href)
    assert (
        chain
        == 'a.btn.primary:attr__class="primary btn"attr__href="/x"href="/x"nth-child="1"nth-of-type="0"text="Click"'
    )
    assert "$elements" not in properties and properties["$ip"] == "1.2.3.4"
    assert properties["$set"] == {"plan": "pro", "utm_medium": "email"}
    assert properties["$set_once"] == {
        "first": 1,
        "$initial_utm_medium": "email",
        "$initial_browser": "Chrome",
        "$initial_current_url": "https://example.com/b",
    }
    assert events["offset"][1] == "2021-11-28 09:59:59.850000"
    assert events["skewed"][1] == "2021-11-28 09:59:55.000000"
    assert "$snapshot" not in events
    assert rows(
        clickhouse, "SELECT distinct_id, session_id, snapshot_data FROM session_recording_events FINAL"
    ) == [("viewer", "s", '{"t":1}')]

    persons = {
        uuid: (orjson.loads(properties), identified, deleted)
        for uuid, properties, identified, deleted in rows(
            clickhouse, "SELECT toString(id), properties, is_identified, is_deleted FROM person FINAL"
        )
    }
    owners = dict(
        rows(
            clickhouse,
            "SELECT distinct_id, toString(person_id) FROM "
            + (
                "person_distinct_id"
                if request.node.callspec.params["direct"] == "original"
                else "person_distinct_id2"
            )
            + " FINAL WHERE is_deleted = 0",
        )
    )
    assert set(owners) == {"new", "old", "viewer"} and owners["new"] == owners["old"] != owners["viewer"]
    merged = persons.pop(owners["new"])
    # the merge: the identified person's properties win, the merged-away person is deleted
    assert merged == (
        {
            "plan": "pro",
            "old": True,
            "utm_medium": "email",
            "first": 1,
            "$initial_utm_medium": "email",
            "$initial_browser": "Chrome",
            "$initial_current_url": "https://example.com/b",
        },
        1,
        0,
    )
    assert persons.pop(owners["viewer"]) == ({}, 0, 0)  # a snapshot creates its person
    [(_, _, deleted)] = persons.values()
    assert deleted == 1

    if request.node.callspec.params["direct"] == "current":  # today's events carry their person
        [(person_id, person_properties)] = rows(
            clickhouse,
            "SELECT toString(person_id), person_properties FROM events FINAL WHERE event = 'again'",
        )
        assert person_id == owners["new"] and orjson.loads(person_properties)["plan"] == "pro"

    postgres = clean_db.execute(
        """SELECT d.distinct_id, p.uuid::text, p.properties FROM posthog_persondistinctid d
           JOIN posthog_person p ON p.id = d.person_id"""
    ).fetchall()
    assert {distinct_id: uuid for distinct_id, uuid, _ in postgres} == owners
    assert {uuid: properties for _, uuid, properties in postgres}[owners["new"]] == merged[0]
