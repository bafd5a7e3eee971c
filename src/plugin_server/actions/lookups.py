"""What matching and hooks read from Postgres, a batch at a time: persons (with the cohorts asked about)
and the REST hooks of teams."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from plugin_server.actions.models import Person
from plugin_server.ingestion.batch_cache import BatchCache

log = logging.getLogger(__name__)

Key = tuple[int, str]  # (team id, distinct id)

_SELECT_PERSONS = """
SELECT k.team_id AS key_team_id, k.distinct_id AS key_distinct_id,
       p.id, p.created_at, p.properties, p.properties_last_updated_at, p.properties_last_operation,
       p.team_id, p.is_user_id, p.is_identified, p.uuid,
       ARRAY(SELECT DISTINCT c.cohort_id FROM posthog_cohortpeople c
             WHERE c.person_id = p.id AND c.cohort_id = ANY(%s::int[])) AS cohorts
FROM unnest(%s::int[], %s::text[]) AS k(team_id, distinct_id)
JOIN posthog_persondistinctid d ON d.team_id = k.team_id AND d.distinct_id = k.distinct_id
JOIN posthog_person p ON p.id = d.person_id
"""

_SELECT_REST_HOOKS = """
SELECT id, event, target, resource_id, team_id FROM ee_hook
WHERE team_id = ANY(%s::int[]) AND event = 'action_performed'
"""


async def fetch_persons(
    pool: AsyncConnectionPool[Any], keys: Iterable[Key], cohort_ids: Iterable[int]
) -> dict[Key, Person]:
    """The persons of these distinct ids, in one query, each with the given cohorts it belongs to."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    async with pool.connection() as connection:
        cursor = await connection.execute(
            _SELECT_PERSONS, (sorted(set(cohort_ids)), [k[0] for k in wanted], [k[1] for k in wanted])
        )
        rows = await cursor.fetchall()
    persons = {}
    for row in rows:
        key = (row.pop("key_team_id"), row.pop("key_distinct_id"))
        cohorts = frozenset(row.pop("cohorts"))
        row["uuid"] = str(row["uuid"])
        row["created_at"] = row["created_at"].isoformat()
        persons[key] = Person(id=row["id"], properties=row["properties"] or {}, cohorts=cohorts, row=row)
    return persons


@dataclass(frozen=True, slots=True)
class RestHook:
    id: str
    event: str
    target: str
    resource_id: int | None


class RestHooks:
    """Each team's `action_performed` REST hooks, cached for `ttl` seconds. A database without the
    (Enterprise) ee_hook table has none."""

    def __init__(self, pool: AsyncConnectionPool[Any], *, ttl: float = 30) -> None:
        self._pool = pool
        self._table_missing = False
        self._cache: BatchCache[int, tuple[RestHook, ...]] = BatchCache(
            self._load, tuple, ttl=ttl, maxsize=10_000
        )

    async def for_teams(self, team_ids: Iterable[int]) -> dict[int, tuple[RestHook, ...]]:
        return await self._cache.get_many(team_ids)

    def forget(self, team_id: int) -> None:
        self._cache.forget([team_id])

    async def _load(self, team_ids: list[int]) -> dict[int, tuple[RestHook, ...]]:
        if self._table_missing:
            return {}
        try:
            async with self._pool.connection() as connection:
                cursor = await connection.execute(_SELECT_REST_HOOKS, (team_ids,))
                rows = await cursor.fetchall()
        except psycopg.errors.UndefinedTable:
            log.info("no ee_hook table: REST hooks are off")
            self._table_missing = True
            return {}
        hooks: dict[int, list[RestHook]] = {}
        for row in rows:
            hooks.setdefault(row["team_id"], []).append(
                RestHook(row["id"], row["event"], row["target"], row["resource_id"])
            )
        return {team_id: tuple(found) for team_id, found in hooks.items()}
