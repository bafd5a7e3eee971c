"""Reading the persons of a team, newest first, for the console and the CLI (no psql needed). A
distinct id search matches ids that start with the text given. Persons live in Postgres whatever
EVENT_STORE is; events are read through `reads` (topology.open_reads)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from plugin_server.db.postgres import escape_like
from plugin_server.reads import DEFAULT_LIMIT


@dataclass(frozen=True, slots=True)
class StoredPerson:
    id: int
    uuid: str
    created_at: datetime
    is_identified: bool
    distinct_ids: list[str]
    properties: dict[str, Any]


def recent_persons(
    connection: psycopg.Connection[Any], team_id: int, distinct_id: str = "", limit: int = DEFAULT_LIMIT
) -> list[StoredPerson]:
    """The team's newest persons with their distinct ids: those with a distinct id starting with
    `distinct_id`."""
    with connection.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(
            """SELECT p.id, p.uuid::text AS uuid, p.created_at, p.is_identified, p.properties,
                      array_agg(d.distinct_id ORDER BY d.id) AS distinct_ids
               FROM posthog_person p JOIN posthog_persondistinctid d ON d.person_id = p.id
               WHERE p.team_id = %(team)s AND p.id IN (
                   SELECT person_id FROM posthog_persondistinctid
                   WHERE team_id = %(team)s AND distinct_id LIKE %(prefix)s)
               GROUP BY p.id ORDER BY p.id DESC LIMIT %(limit)s""",
            {"team": team_id, "prefix": escape_like(distinct_id) + "%", "limit": limit},
        ).fetchall()
    return [StoredPerson(**row) for row in rows]
