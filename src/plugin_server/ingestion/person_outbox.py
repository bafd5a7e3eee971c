"""The person outbox: what a person mirror has not taken yet, kept in Postgres.

When persons are mirrored to another store (ClickHouse through Kafka), every person and distinct-id row
the person manager writes is also recorded in `plugin_server_person_outbox`, in the same transaction as
the write, and deleted once the PersonSink took it. A worker killed between the two leaves its rows
there (its batch, delivered again, finds nothing left to change); `resend` sends them later: a person
or a distinct id as it is now (read again, so an old state never overwrites a newer one), a deleted
person or a moved-away distinct id as recorded (a deletion is final).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from plugin_server.ingestion.persons import DistinctIdRow, PersonChange, PersonRow, person_row
from plugin_server.jsvalues import json_text

log = logging.getLogger(__name__)

Connection = psycopg.AsyncConnection[dict[str, Any]]
Send = Callable[[list[PersonChange]], Awaitable[None]]

_ADD = """
INSERT INTO plugin_server_person_outbox (row)
SELECT r FROM jsonb_array_elements(%s::jsonb) AS r
RETURNING id
"""

_CLAIM = """
SELECT id, row FROM plugin_server_person_outbox
WHERE written_at < now() - make_interval(secs => %s)
ORDER BY id
LIMIT %s
FOR UPDATE SKIP LOCKED
"""

_PERSONS_NOW = """
SELECT p.id, p.uuid, p.team_id, p.created_at, p.properties, p.is_identified, p.version
FROM posthog_person p WHERE p.uuid = ANY(%s::uuid[])
"""

_OWNERS_NOW = """
SELECT d.team_id, d.distinct_id, p.uuid::text AS person_uuid, COALESCE(d.version, 0) AS version
FROM unnest(%s::int[], %s::text[]) AS k(team_id, distinct_id)
JOIN posthog_persondistinctid d ON d.team_id = k.team_id AND d.distinct_id = k.distinct_id
JOIN posthog_person p ON p.id = d.person_id
"""

_KINDS: dict[str, type[PersonRow] | type[DistinctIdRow]] = {
    "PersonRow": PersonRow,
    "DistinctIdRow": DistinctIdRow,
}


class PersonOutbox:
    """Rows recorded until a sink took them."""

    async def add(self, conn: Connection, rows: Sequence[PersonChange]) -> list[int]:
        """Record the rows (inside the caller's transaction); answer their ids."""
        if not rows:
            return []
        recorded = [_recorded(row) for row in rows]
        cursor = await conn.execute(_ADD, (json_text(recorded),))
        return [row["id"] for row in await cursor.fetchall()]

    async def remove(self, pool: AsyncConnectionPool[Any], ids: Sequence[int]) -> None:
        if ids:
            async with pool.connection() as conn:
                await conn.execute("DELETE FROM plugin_server_person_outbox WHERE id = ANY(%s)", (list(ids),))

    async def resend(
        self, pool: AsyncConnectionPool[Any], send: Send, *, older_than: float, limit: int = 1000
    ) -> int:
        """Send again, with `send`, the rows recorded more than `older_than` seconds ago (at most `limit`,
        as they are now); delete them once sent. Answer how many were recorded."""
        async with pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(_CLAIM, (older_than, limit))
            claimed = await cursor.fetchall()
            if not claimed:
                return 0
            await send(await _as_now(conn, [_row(record["row"]) for record in claimed]))
            ids = [record["id"] for record in claimed]
            await conn.execute("DELETE FROM plugin_server_person_outbox WHERE id = ANY(%s)", (ids,))
        log.warning("sent again %d person rows a worker had left unsent", len(claimed))
        return len(claimed)


def _recorded(row: PersonChange) -> dict[str, Any]:
    """The row's fields and kind (shallow: `dataclasses.asdict` deep-copies the properties, slowly)."""
    return {
        "kind": type(row).__name__,
        **{field.name: getattr(row, field.name) for field in dataclasses.fields(row)},
    }


def _row(recorded: dict[str, Any]) -> PersonChange:
    values = dict(recorded)
    kind = _KINDS[values.pop("kind")]
    if kind is PersonRow:
        values["created_at"] = datetime.fromisoformat(values["created_at"])
    return kind(**values)


async def _as_now(conn: Connection, rows: list[PersonChange]) -> list[PersonChange]:
    """Each live person and distinct id once, as it is now; deletions as recorded."""
    uuids = list(dict.fromkeys(row.uuid for row in rows if isinstance(row, PersonRow) and not row.is_deleted))
    keys = list(
        dict.fromkeys(
            (row.team_id, row.distinct_id)
            for row in rows
            if isinstance(row, DistinctIdRow) and not row.is_deleted
        )
    )
    cursor = await conn.execute(_PERSONS_NOW, (uuids,))
    now: list[PersonChange] = [person_row(row) for row in await cursor.fetchall()]
    if keys:
        cursor = await conn.execute(_OWNERS_NOW, ([team for team, _ in keys], [key for _, key in keys]))
        now += [DistinctIdRow(**row) for row in await cursor.fetchall()]
    return now + [row for row in rows if row.is_deleted]


RESEND_AFTER_SECONDS = 60.0  # a row this old was left by a worker that died (a live one sends in seconds)
RESEND_EVERY_SECONDS = 30.0


async def resend_forever(
    outbox: PersonOutbox,
    pool: AsyncConnectionPool[Any],
    send: Send,
    *,
    older_than: float = RESEND_AFTER_SECONDS,
    every: float = RESEND_EVERY_SECONDS,
) -> None:
    """Send again, every `every` seconds, what dead workers left in the outbox (until cancelled)."""
    while True:
        try:
            while await outbox.resend(pool, send, older_than=older_than):
                pass
        except Exception:  # the database or the mirror is down: the rows wait for the next round
            log.exception("could not send again the person rows left in the outbox")
        await asyncio.sleep(every)
