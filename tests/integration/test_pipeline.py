"""The whole pipeline over real Postgres: Celery messages in, PostHog rows out."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.celery import PROCESS_EVENT_TASK, encode_task
from plugin_server.ingestion.definitions import DefinitionsManager
from plugin_server.ingestion.groups import GroupTypeManager
from plugin_server.ingestion.persons import PersonManager
from plugin_server.ingestion.pipeline import EventPipeline
from plugin_server.ingestion.teams import TeamManager
from plugin_server.sinks.memory import ListEventSink
from plugin_server.sinks.postgres import PostgresEventSink, PostgresPersonSink

NOW = "2021-11-28T10:00:00.000Z"
Db = psycopg.Connection[Any]


def pipeline(pool: AsyncConnectionPool[Any]) -> EventPipeline:
    return EventPipeline(
        teams=TeamManager(pool),
        definitions=DefinitionsManager(pool),
        groups=GroupTypeManager(pool),
        persons=PersonManager(pool, lru_size=100),
        sink=PostgresEventSink(pool),
        person_sink=PostgresPersonSink(),
    )


def message(
    team_id: int,
    distinct_id: str,
    data: dict[str, Any],
    *,
    ip: str | None = "11.12.13.14",
    task_id: str | None = None,
) -> bytes:
    args = [distinct_id, ip, "http://example.com", data, team_id, NOW, NOW]
    return encode_task(PROCESS_EVENT_TASK, args, queue="posthog-plugins", task_id=task_id)


def rows(db: Db, sql: str) -> list[dict[str, Any]]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        return cursor.execute(sql).fetchall()


async def test_a_new_person_capture_stores_event_person_definitions(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    data = {
        "event": "$autocapture",
        "properties": {
            "distinct_id": 2,
            "token": team.api_token,
            "$browser": "Chrome",
            "$current_url": "https://test.com",
            "utm_medium": "twitter",
            "$set": {"email": "a@b.c"},
            "$elements": [
                {"tag_name": "a", "nth_child": 1, "nth_of_type": 2, "attr__class": "btn btn-sm"},
                {"tag_name": "div", "nth_child": 1, "nth_of_type": 2, "$el_text": "💻"},
            ],
        },
    }
    outcome = await pipeline(pool).run([message(team.team_id, "2", data)])
    assert (outcome.stored, outcome.dead_letters) == (1, [])

    [event] = rows(clean_db, "SELECT * FROM posthog_event")
    properties = event["properties"]
    assert event["event"] == "$autocapture" and event["distinct_id"] == "2"
    assert properties["$ip"] == "11.12.13.14"
    assert "$elements" not in properties
    assert properties["$set"] == {"email": "a@b.c", "utm_medium": "twitter"}
    assert properties["$set_once"] == {
        "$initial_browser": "Chrome",
        "$initial_current_url": "https://test.com",
        "$initial_utm_medium": "twitter",
    }
    assert event["elements_hash"] == "0679137c0cd2408a2906839143e7a71f"
    [person] = rows(clean_db, "SELECT * FROM posthog_person")
    assert person["properties"] == {
        "email": "a@b.c",
        "utm_medium": "twitter",
        "$initial_browser": "Chrome",
        "$initial_current_url": "https://test.com",
        "$initial_utm_medium": "twitter",
    }
    elements = rows(clean_db, 'SELECT tag_name, attr_class, "order" FROM posthog_element ORDER BY "order"')
    assert elements == [
        {"tag_name": "a", "attr_class": ["btn", "btn-sm"], "order": 0},
        {"tag_name": "div", "attr_class": None, "order": 1},
    ]
    names = {row["name"] for row in rows(clean_db, "SELECT name FROM posthog_eventdefinition")}
    assert names == {"$autocapture"}
    properties_defined = {
        row["name"] for row in rows(clean_db, "SELECT name FROM posthog_propertydefinition")
    }
    # Definitions are recorded before the campaign and initial properties are added (rule 23).
    assert (
        "$ip" in properties_defined
        and "$browser" in properties_defined
        and "$set_once" not in properties_defined
    )
    assert rows(clean_db, "SELECT ingested_event FROM posthog_team") == [{"ingested_event": True}]


async def test_the_same_message_twice_is_stored_once(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    """A redelivered message (same Celery task id) gets the same uuid, and the write is a no-op."""
    repeated = message(team.team_id, "someone", {"event": "once"}, task_id="task-1")
    await pipeline(pool).run([repeated, repeated])
    await pipeline(pool).run([repeated])
    assert rows(clean_db, "SELECT COUNT(*) AS n FROM posthog_event") == [{"n": 1}]


async def test_snapshots_go_to_session_recordings_only(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    data = {
        "event": "$snapshot",
        "properties": {"$session_id": "abcf-efg", "$snapshot_data": {"timestamp": 123}},
    }
    outcome = await pipeline(pool).run([message(team.team_id, "some-id", data)])
    assert outcome.stored == 1
    assert rows(clean_db, "SELECT COUNT(*) AS n FROM posthog_event") == [{"n": 0}]
    [recording] = rows(clean_db, "SELECT * FROM posthog_sessionrecordingevent")
    assert recording["session_id"] == "abcf-efg"
    assert recording["snapshot_data"] == {"timestamp": 123}
    assert recording["distinct_id"] == "some-id"
    assert rows(clean_db, "SELECT COUNT(*) AS n FROM posthog_persondistinctid") == [{"n": 1}]
    assert rows(clean_db, "SELECT COUNT(*) AS n FROM posthog_eventdefinition") == [{"n": 0}]


async def test_unknown_team_and_invalid_events_become_dead_letters(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    unknown = message(9999, "x", {"event": "lost"})
    bad_uuid = message(team.team_id, "x", {"event": "e", "uuid": "not-a-uuid"})
    good = message(team.team_id, "x", {"event": "kept"})
    outcome = await pipeline(pool).run([unknown, b"garbage", bad_uuid, good])
    assert outcome.stored == 1
    reasons = {msg: reason for msg, reason in outcome.dead_letters}
    assert reasons[unknown] == "No team found with ID 9999. Can't ingest event."
    assert "malformed message" in reasons[b"garbage"]
    assert reasons[bad_uuid] == 'invalid event: Not a valid UUID: "not-a-uuid"'


async def test_anonymize_ips_keeps_the_ip_out(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    clean_db.execute("UPDATE posthog_team SET anonymize_ips = true")
    await pipeline(pool).run([message(team.team_id, "x", {"event": "e"})])
    [event] = rows(clean_db, "SELECT properties FROM posthog_event")
    assert "$ip" not in event["properties"]


async def test_groups_get_their_index_properties(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    events = [
        message(team.team_id, "x", {"event": "e", "properties": {"$groups": {"organization": "org-1"}}}),
        message(
            team.team_id,
            "x",
            {"event": "e", "properties": {"$groups": {"project": "p", "organization": "o"}}},
        ),
        message(
            team.team_id,
            "x",
            {"event": "$groupidentify", "properties": {"$group_type": "company", "$group_key": "c"}},
        ),
    ]
    await pipeline(pool).run(events)
    stored = [row["properties"] for row in rows(clean_db, "SELECT properties FROM posthog_event ORDER BY id")]
    assert stored[0]["$group_0"] == "org-1"
    assert (stored[1]["$group_0"], stored[1]["$group_1"]) == ("o", "p")
    mapping = rows(clean_db, "SELECT group_type, group_type_index FROM posthog_grouptypemapping ORDER BY 2")
    assert [(row["group_type"], row["group_type_index"]) for row in mapping] == [
        ("organization", 0),
        ("project", 1),
        ("company", 2),
    ]


async def test_identify_merges_the_anonymous_person(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    events = [
        message(team.team_id, "anon", {"event": "$pageview", "properties": {"$set": {"a": 1}}}),
        message(team.team_id, "user", {"event": "$pageview", "properties": {"$set": {"b": 2}}}),
        message(team.team_id, "user", {"event": "$identify", "properties": {"$anon_distinct_id": "anon"}}),
    ]
    await pipeline(pool).run(events)
    [person] = rows(clean_db, "SELECT id, properties, is_identified FROM posthog_person")
    assert person["properties"] == {"a": 1, "b": 2}
    assert person["is_identified"] is True
    distinct_ids = rows(clean_db, "SELECT distinct_id, person_id FROM posthog_persondistinctid ORDER BY 1")
    assert [(row["distinct_id"], row["person_id"]) for row in distinct_ids] == [
        ("anon", person["id"]),
        ("user", person["id"]),
    ]


async def test_any_event_sink_takes_the_pipelines_events(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    """The pipeline stores through the EventSink interface only: a list sink gets what Postgres would."""
    sink = ListEventSink()
    built = pipeline(pool)
    built.sink = sink
    data = {"event": "e", "properties": {"a": 1}, "uuid": "0178a3ab-d163-0000-4b55-bceadebb03fa"}
    first = await built.run([message(team.team_id, "d", data)])
    again = await built.run([message(team.team_id, "d", data)])  # delivered again
    assert (first.stored, again.stored) == (1, 1)
    [(key, event)] = sink.events.items()
    assert key == (team.team_id, "0178a3ab-d163-0000-4b55-bceadebb03fa")
    assert (event.event, event.distinct_id, event.properties["$ip"]) == ("e", "d", "11.12.13.14")
    assert rows(clean_db, "SELECT * FROM posthog_event") == []


async def test_a_recording_with_an_overlong_session_id_is_stored_with_it_cut(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    """Found by the queue fuzz: session_id is varchar(200); a longer one made the batch a dead letter."""
    data = {"event": "$snapshot", "properties": {"$session_id": "s" * 300, "$snapshot_data": {"a": 1}}}
    outcome = await pipeline(pool).run([message(team.team_id, "d", data)])
    assert (outcome.stored, outcome.dead_letters) == (1, [])
    [recording] = rows(clean_db, "SELECT session_id FROM posthog_sessionrecordingevent")
    assert recording["session_id"] == "s" * 200
