"""PostgresEventSink on real Postgres: what COPY stores is what the event held, and a batch that meets
events stored already (a redelivery) stores only the others, once; the rows' JSON is in the key order
Postgres keeps."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.types import Element
from plugin_server.jsvalues import json_bytes
from plugin_server.sinks._copy_binary import event_rows
from plugin_server.sinks.postgres import _COPY_EVENTS, PostgresEventSink
from tests.pipelines import WrittenFrom, prepared_event
from tests.strategies import on_services

Db = psycopg.Connection[Any]
AWKWARD = 'tab\there, newline\nthere, return\r, backslash \\ and \\N, quote " and ünïcödé ☃'


def stored(db: Db) -> dict[str, dict[str, Any]]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        found = cursor.execute(
            "SELECT uuid::text, event, distinct_id, properties, team_id, timestamp, elements, elements_hash,"
            " site_url FROM posthog_event"
        ).fetchall()
    return {row.pop("uuid"): row for row in found}


async def test_every_column_is_stored_as_the_event_held_it(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    awkward = prepared_event(team.team_id, AWKWARD, site_url=AWKWARD)
    no_site = prepared_event(team.team_id, site_url=None)
    with_elements = prepared_event(
        team.team_id,
        elements=[Element(tag_name="a", text=AWKWARD, attr_class=["x\\y"], attributes={"attr__href": "/\t"})],
    )
    await PostgresEventSink(pool).write([awkward, no_site, with_elements])

    rows = stored(clean_db)
    assert rows[awkward.uuid] == {
        "event": awkward.event,
        "distinct_id": awkward.distinct_id,
        "properties": awkward.properties,
        "team_id": team.team_id,
        "timestamp": awkward.timestamp,
        "elements": [],
        "elements_hash": "",
        "site_url": AWKWARD,
    }
    assert rows[no_site.uuid]["site_url"] is None
    (element,) = rows[with_elements.uuid]["elements"]
    assert (element["text"], element["attr_class"], element["attributes"]) == (
        AWKWARD,
        ["x\\y"],
        {"attr__href": "/\t"},
    )
    assert rows[with_elements.uuid]["elements_hash"] != ""


async def test_times_uuids_and_numbers_are_stored_as_the_event_held_them(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    """The binary rows' own encodings: a time in any zone, naive (UTC), before 2000 or far ahead, to the
    microsecond; a uuid in capitals; text of every width of UTF-8."""
    moments = [
        datetime(2026, 12, 3, 10, 0, 0, 123456, tzinfo=UTC),
        datetime(2026, 12, 3, 15, 30, 0, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-8))),
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999999),  # naive: UTC
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
    ]
    events = [
        prepared_event(team.team_id, f"time {n} ✓ 𝄞", timestamp=moment, uuid=str(uuid.uuid4()).upper())
        for n, moment in enumerate(moments)
    ]
    await PostgresEventSink(pool).write(events)

    rows = stored(clean_db)
    for item, moment in zip(events, moments, strict=True):
        row = rows[item.uuid.lower()]
        expected = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        assert row["timestamp"] == expected
        assert (row["event"], row["distinct_id"], row["team_id"]) == (
            item.event,
            item.distinct_id,
            team.team_id,
        )


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [("uuid", "not-a-uuid", ValueError), ("uuid", "0" * 36, ValueError), ("team_id", 2**40, OverflowError)],
)
async def test_an_event_that_cannot_be_packed_stores_nothing_of_its_batch(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db, field: str, value: Any, error: type
) -> None:
    bad = replace(prepared_event(team.team_id, "bad"), **{field: value})
    with pytest.raises(error):
        await PostgresEventSink(pool).write([prepared_event(team.team_id), bad])
    assert stored(clean_db) == {}


async def test_a_batch_meeting_stored_events_stores_the_rest_once(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    sink = PostgresEventSink(pool)
    first = [prepared_event(team.team_id, f"first {n}") for n in range(3)]
    await sink.write(first)
    new = [prepared_event(team.team_id, f"new {n}") for n in range(3)]
    repeated = new[0]

    await sink.write([*first, *new, repeated])  # COPY fails on the stored ones: the INSERT takes over

    rows = stored(clean_db)
    assert sorted(rows) == sorted(item.uuid for item in [*first, *new])
    assert rows[new[2].uuid]["properties"] == new[2].properties


async def test_a_redelivered_batch_with_elements_stores_its_events_and_element_groups_once(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    sink = PostgresEventSink(pool)
    clicks = [
        prepared_event(team.team_id, f"click {n}", elements=[Element(tag_name="a", text=f"{n % 2}")])
        for n in range(4)
    ]
    await sink.write(clicks[:2])

    await sink.write(clicks)  # the COPY fails on the first two, stored already: the INSERT takes over

    assert sorted(stored(clean_db)) == sorted(click.uuid for click in clicks)
    counts = clean_db.execute(
        "SELECT (SELECT count(*) FROM posthog_elementgroup), (SELECT count(*) FROM posthog_element)"
    ).fetchone()
    assert counts == (2, 2)


KEY = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)
NESTED = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), KEY),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEY, children, max_size=8),
    max_leaves=30,
)


def key_order(json_text: str | bytes) -> Any:
    """The keys of every object of a JSON text, in the text's order (values apart)."""
    return json.loads(json_text, object_pairs_hook=lambda pairs: [(key, value) for key, value in pairs])


@on_services(max_examples=60)
@given(properties=st.dictionaries(KEY, NESTED, max_size=12))
def test_postgres_keeps_the_key_order_the_rows_are_written_in(
    properties: dict[str, Any], team: CreatedTeam, clean_db: Db
) -> None:
    """The rows' JSON is written in jsonb's own key order (what spares Postgres its sort): what Postgres
    hands back has every object's keys in the order they were written."""
    writer = WrittenFrom()
    stored_event = prepared_event(team.team_id, properties=properties)
    with clean_db.cursor().copy(_COPY_EVENTS) as copy:
        copy.write(event_rows([stored_event], [""], 0, writer))
    row = clean_db.execute(
        "DELETE FROM posthog_event WHERE uuid = %s RETURNING properties::text", (stored_event.uuid,)
    ).fetchone()
    assert row is not None
    assert key_order(row[0]) == key_order(json_bytes(writer.values[0]))
