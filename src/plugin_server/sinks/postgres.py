"""Writes a micro-batch of processed events to Postgres: events, element groups, session recordings.
Persons and distinct ids are already in Postgres when the sinks run, so its PersonSink does nothing.

Each table gets one statement per batch: events by binary COPY (Postgres's cheapest way in; the rows
are packed in C, `_copy_binary.c`), the others by
`INSERT ... SELECT FROM unnest(...)`. Events and recordings carry their uuid, and a unique (team_id, uuid)
index keeps an event from being stored twice: a batch whose COPY meets an event already stored (a
redelivered message) is written again by an INSERT that skips those, so it stores nothing twice. No
transaction spans two writes: an element group shares one with its elements, and the events' COPY has
one of its own where their team key is checked once per batch (`team_references`), else it
autocommits. A failed COPY stored none of its rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.errors import UniqueViolation
from psycopg_pool import AsyncConnectionPool

from plugin_server.ingestion.elements import elements_hash
from plugin_server.ingestion.persons import Key, PersonRow
from plugin_server.ingestion.types import Element, PreparedEvent
from plugin_server.jsvalues import js_string, json_bytes, json_text
from plugin_server.sinks import NO_PERSONS, PersonSinkRow
from plugin_server.sinks._copy_binary import event_rows
from plugin_server.sinks.team_references import TeamReferences

_EVENT_COLUMNS = (
    "uuid, event, distinct_id, properties, team_id, timestamp, created_at, elements, elements_hash, site_url"
)
_COPY_EVENTS = f"COPY posthog_event ({_EVENT_COLUMNS}) FROM STDIN (FORMAT binary)"
_POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# The fallback for a batch with events stored already. The batch travels as one JSON document (serialised by orjson in C, parsed by Postgres in C): much
# cheaper than one array parameter per column, which the driver escapes item by item in Python.
_INSERT_EVENTS = """
INSERT INTO posthog_event
    (uuid, event, distinct_id, properties, team_id, timestamp, created_at, elements, elements_hash, site_url)
SELECT uuid, event, distinct_id, properties, team_id, timestamp, %s, elements, elements_hash, site_url
FROM jsonb_to_recordset(%s::jsonb) AS x(
    uuid uuid, event text, distinct_id text, properties jsonb, team_id int, timestamp timestamptz,
    elements jsonb, elements_hash text, site_url text)
ON CONFLICT (team_id, uuid) DO NOTHING
"""

_INSERT_GROUPS = """
INSERT INTO posthog_elementgroup (hash, team_id)
SELECT DISTINCT h, t FROM unnest(%s::text[], %s::int[]) AS x(h, t)
ON CONFLICT DO NOTHING
RETURNING id, hash, team_id
"""

_INSERT_ELEMENTS = """
INSERT INTO posthog_element
    (text, tag_name, href, attr_id, nth_child, nth_of_type, attributes, "order", attr_class, group_id)
SELECT tx, tn, hr, ai, nc, nt, at::jsonb, o,
       CASE WHEN ac IS NULL THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(ac::jsonb)) END, g
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::int[], %s::text[], %s::int[],
            %s::text[], %s::int[]) AS x(tx, tn, hr, ai, nc, nt, at, o, ac, g)
"""

_INSERT_RECORDINGS = """
INSERT INTO posthog_sessionrecordingevent
    (uuid, created_at, team_id, distinct_id, session_id, timestamp, snapshot_data)
SELECT u, ts, t, d, s, ts, sd::jsonb
FROM unnest(%s::uuid[], %s::int[], %s::text[], %s::text[], %s::timestamptz[], %s::text[])
    AS x(u, t, d, s, ts, sd)
ON CONFLICT (team_id, uuid) DO NOTHING
"""

SESSION_ID_LIMIT = 200  # posthog_sessionrecordingevent.session_id is varchar(200): cut to fit


class PostgresEventSink:
    """Stores processed events in posthog_event (with their element groups) and recordings."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool
        self._team_references = TeamReferences()

    async def write(
        self, events: Sequence[PreparedEvent], persons: Mapping[Key, PersonRow] = NO_PERSONS
    ) -> None:
        """Store the batch; recordings ($snapshot) go to their own table, as in the original (the
        persons are Postgres's own: nothing to store with the events).

        No transaction around the whole: each write is idempotent on its own (uuid, element hash), so a
        write that fails after another succeeded is completed by the retry."""
        recordings = [event for event in events if event.is_snapshot]
        regular = [event for event in events if not event.is_snapshot] if recordings else events
        async with self._pool.connection() as connection:
            hashes = await self._write_element_groups(connection, regular)
            if regular:
                await self._write_events(connection, regular, hashes)
            if recordings:
                await self._write_recordings(connection, recordings)

    async def _write_element_groups(self, connection: Any, events: Sequence[PreparedEvent]) -> list[str]:
        """Create the element group of every event with elements; return each event's hash ('' if none)."""
        hashes = [elements_hash(event.elements) if event.elements else "" for event in events]
        wanted = {
            (digest, event.team_id): event.elements
            for digest, event in zip(hashes, events, strict=True)
            if digest
        }
        if not wanted:
            return hashes
        async with connection.transaction():  # a group is only stored with its elements
            await self._insert_element_groups(connection, wanted)
        return hashes

    async def _insert_element_groups(
        self, connection: Any, wanted: dict[tuple[str, int], list[Element]]
    ) -> None:
        keys = list(wanted)
        cursor = await connection.execute(_INSERT_GROUPS, ([h for h, _ in keys], [t for _, t in keys]))
        columns: list[list[Any]] = [[] for _ in range(10)]
        for row in await cursor.fetchall():
            for order, element in enumerate(wanted[(row["hash"], row["team_id"])]):
                values = (
                    element.text,
                    element.tag_name,
                    element.href,
                    element.attr_id,
                    element.nth_child,
                    element.nth_of_type,
                    json_text(element.attributes or {}),
                    order,
                    None if element.attr_class is None else json_text(element.attr_class),
                    row["id"],
                )
                for column, value in zip(columns, values, strict=True):
                    column.append(value)
        if columns[0]:
            await connection.execute(_INSERT_ELEMENTS, columns)

    async def _write_events(
        self, connection: Any, events: Sequence[PreparedEvent], hashes: list[str]
    ) -> None:
        created_at = datetime.now(UTC)
        teams = {event.team_id for event in events}
        try:  # all of the COPY or none of it is stored
            async with (
                self._team_references.writing_events(connection, teams),
                connection.cursor().copy(_COPY_EVENTS) as copy,
            ):
                await copy.write(copy_rows(events, hashes, created_at))
        except UniqueViolation:
            async with self._team_references.writing_events(connection, teams):
                await self._insert_events(connection, events, hashes, created_at)

    async def _insert_events(
        self, connection: Any, events: Sequence[PreparedEvent], hashes: list[str], created_at: datetime
    ) -> None:
        """The batch by INSERT, skipping the events stored already."""
        rows = [
            {
                "uuid": event.uuid,
                "event": event.event,
                "distinct_id": event.distinct_id,
                "properties": event.properties,
                "team_id": event.team_id,
                "timestamp": event.timestamp,
                "elements": event.elements,  # orjson writes dataclasses itself, 9x faster than asdict
                "elements_hash": digest,
                "site_url": event.site_url,
            }
            for event, digest in zip(events, hashes, strict=True)
        ]
        await connection.execute(_INSERT_EVENTS, (created_at, json_text(rows)))

    async def _write_recordings(self, connection: Any, events: Sequence[PreparedEvent]) -> None:
        await connection.execute(
            _INSERT_RECORDINGS,
            (
                [event.uuid for event in events],
                [event.team_id for event in events],
                [event.distinct_id for event in events],
                [js_string(event.properties.get("$session_id") or "")[:SESSION_ID_LIMIT] for event in events],
                [event.timestamp for event in events],
                [json_text(event.properties.get("$snapshot_data")) for event in events],
            ),
        )


def copy_rows(events: Sequence[PreparedEvent], hashes: list[str], created_at: datetime) -> bytes:
    """The events' rows of posthog_event (`_EVENT_COLUMNS`) as a binary COPY payload. Binary, because
    Postgres then takes uuids, integers and times as they are stored rather than parsing text (1.3-2.1
    µs less of its CPU per row), and packed in C, where Python took longer than that to pack them."""
    return event_rows(events, hashes, (created_at - _POSTGRES_EPOCH) // _MICROSECOND, json_bytes)


class PostgresPersonSink:
    """The PersonSink of Postgres mode: a no-op. Postgres is the store of persons and distinct ids, and
    the person manager wrote them there before the sinks run; groups are not kept in Postgres (as in the
    original, whose `$groupidentify` wrote only to ClickHouse's `clickhouse_groups`)."""

    async def write(self, rows: Sequence[PersonSinkRow]) -> None:
        return None
