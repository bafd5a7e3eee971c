"""Group types: each team names up to five kinds of group (company, project...), each with a column index.

An event's `$groups` {type: key} gets `$group_<index>` = key for every type that has an index, and a
`$groupidentify` event names one group whose properties are set. The indexes of a whole micro-batch
are resolved at once by `GroupTypeManager.resolve`.

Group types and keys are text: a non-string value is written as its JSON, which is how ClickHouse reads
the `$group_<index>` column of the JSON that the original stored as is (a whole float loses its `.0`,
as JavaScript prints it). A `null` key names no group and is skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from psycopg_pool import AsyncConnectionPool

from plugin_server.ingestion.batch_cache import BatchCache

log = logging.getLogger(__name__)

MAX_GROUP_TYPES_PER_TEAM = 5
MAX_GROUP_TYPE_LENGTH = 400
GROUPIDENTIFY_EVENT = "$groupidentify"

GroupTypes = dict[str, int]
Pair = tuple[int, str]  # (team id, group type)
TypesByTeam = dict[int, list[str]]
Row = tuple[int, str, int]  # (team id, group type, index)

_SELECT_GROUP_TYPES = """
    SELECT team_id, group_type, group_type_index FROM posthog_grouptypemapping WHERE team_id = ANY(%s::int[])
"""

# Insert each wanted (team, type) at its chosen index unless the type or the index is already taken,
# and answer with the index of every wanted type that now exists: inserted here, or committed before
# this statement began. A type missing from the answer lost a race; the caller reloads and retries.
_INSERT_GROUP_TYPES = """
    WITH wanted AS (
        SELECT * FROM unnest(%s::int[], %s::text[], %s::int[]) AS w(team_id, group_type, group_type_index)
    ), inserted AS (
        INSERT INTO posthog_grouptypemapping (team_id, group_type, group_type_index)
        SELECT w.team_id, w.group_type, w.group_type_index FROM wanted w
        WHERE EXISTS (SELECT 1 FROM posthog_team WHERE posthog_team.id = w.team_id)
        ORDER BY w.team_id, w.group_type_index
        ON CONFLICT DO NOTHING
        RETURNING team_id, group_type, group_type_index
    )
    SELECT team_id, group_type, group_type_index FROM inserted
    UNION
    SELECT m.team_id, m.group_type, m.group_type_index
    FROM posthog_grouptypemapping m JOIN wanted w ON m.team_id = w.team_id AND m.group_type = w.group_type
"""


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:  # orjson writes int64
        value = int(value)
    return orjson.dumps(value, default=str).decode()


def _js_truthy(value: Any) -> bool:
    """JavaScript truthiness for JSON values: empty lists and objects are true, 0 and "" are false."""
    if isinstance(value, bool | int | float):
        return bool(value)
    return value is not None and value != ""


def _storable(group_type: str) -> bool:
    return len(group_type) <= MAX_GROUP_TYPE_LENGTH and "\x00" not in group_type


def group_pairs(properties: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (group type, group key) pairs of `properties["$groups"]`, in order; [] unless it is an object."""
    groups = properties.get("$groups")
    if not isinstance(groups, dict):
        return []
    return [(_as_text(group_type), _as_text(key)) for group_type, key in groups.items() if key is not None]


def groupidentify_pair(event_name: str, properties: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (group type, group key) that a `$groupidentify` event sets properties on, if it names both."""
    if event_name != GROUPIDENTIFY_EVENT:
        return None
    group_type, key = properties.get("$group_type"), properties.get("$group_key")
    if not (_js_truthy(group_type) and _js_truthy(key)):
        return None
    return _as_text(group_type), _as_text(key)


@dataclass(frozen=True, slots=True)
class GroupRow:
    """A group as a `$groupidentify` event set it: its properties are `$group_set`, replacing the ones it
    had (rule 28). The original kept groups only in ClickHouse (`clickhouse_groups`), not in Postgres."""

    team_id: int
    group_type_index: int
    group_key: str
    properties: dict[str, Any]
    created_at: datetime  # the event's timestamp


def identified_group(
    team_id: int,
    event_name: str,
    properties: Mapping[str, Any],
    timestamp: datetime,
    indexes: Mapping[tuple[int, str], int | None],
) -> GroupRow | None:
    """The group a `$groupidentify` event sets, if it names one whose type has an index in `indexes`."""
    identified = groupidentify_pair(event_name, properties)
    if identified is None:
        return None
    group_type, key = identified
    index = indexes.get((team_id, group_type))
    if index is None:
        return None
    to_set = properties.get("$group_set")
    return GroupRow(team_id, index, key, to_set if isinstance(to_set, dict) else {}, timestamp)


def add_group_properties(
    properties: dict[str, Any], team_id: int, indexes: Mapping[tuple[int, str], int | None]
) -> None:
    """Set `$group_<index>` = key for each `$groups` type that `indexes` (from `resolve`) gives an index."""
    for group_type, key in group_pairs(properties):
        index = indexes.get((team_id, group_type))
        if index is not None:
            properties[f"$group_{index}"] = key


def _assign(pending: TypesByTeam, known: dict[int, GroupTypes]) -> tuple[list[Row], list[Pair]]:
    """Give each pending type the next free index of its team; also return the types left without one."""
    rows: list[Row] = []
    full: list[Pair] = []
    for team_id, group_types in pending.items():
        taken = set(known[team_id].values())
        free = iter(index for index in range(MAX_GROUP_TYPES_PER_TEAM) if index not in taken)
        for group_type in group_types:
            index = next(free, None)
            if index is None:
                full.append((team_id, group_type))
            else:
                rows.append((team_id, group_type, index))
    return rows, full


class GroupTypeManager:
    """Resolves group type indexes for whole batches; each team's types are cached for `ttl` seconds."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        ttl: float = 30,
        max_teams: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._types: BatchCache[int, GroupTypes] = BatchCache(
            self._load, dict, ttl=ttl, maxsize=max_teams, clock=clock
        )

    async def resolve(self, pairs: Iterable[Pair]) -> dict[Pair, int | None]:
        """The index of every (team_id, group type), creating unknown types at their team's next free index.

        None when the team already has five types (or the type is too long to store). Unknown types are
        created in the order they are given, so the first one seen gets the lowest index.
        """
        wanted: TypesByTeam = {}
        for team_id, group_type in dict.fromkeys(pairs):
            wanted.setdefault(team_id, []).append(group_type)
        known = await self._types.get_many(wanted)
        resolved: dict[Pair, int | None] = {}
        pending: TypesByTeam = {}
        for team_id, group_types in wanted.items():
            for group_type in group_types:
                if group_type in known[team_id]:
                    resolved[(team_id, group_type)] = known[team_id][group_type]
                elif _storable(group_type):
                    pending.setdefault(team_id, []).append(group_type)
                else:
                    resolved[(team_id, group_type)] = None
        if pending:
            working = {team_id: dict(known[team_id]) for team_id in pending}
            resolved.update(await self._create(pending, working))
        return resolved

    async def _create(self, pending: TypesByTeam, known: dict[int, GroupTypes]) -> dict[Pair, int | None]:
        """Insert the pending types; the types that lost a race are retried after reloading their team.

        Every lost race means another writer took an index or created the type, which the reload shows;
        with five indexes per team, six rounds are always enough. A loss that the reload does not explain
        (the team does not exist, or rows were deleted meanwhile) gives None for this batch.
        """
        asked = [(team_id, group_type) for team_id, types in pending.items() for group_type in types]
        resolved: dict[Pair, int | None] = {}
        for _ in range(MAX_GROUP_TYPES_PER_TEAM + 1):
            rows, full = _assign(pending, known)
            resolved.update(dict.fromkeys(full))
            if not rows:
                break
            for team_id, group_type, index in await self._insert(rows):
                resolved[(team_id, group_type)] = known[team_id][group_type] = index
            self._types.forget(pending)
            lost: TypesByTeam = {}
            for team_id, group_type, _ in rows:
                if (team_id, group_type) not in resolved:
                    lost.setdefault(team_id, []).append(group_type)
            if not lost:
                break
            pending = await self._reload(lost, known, resolved)
        for pair in asked:
            resolved.setdefault(pair, None)
        return resolved

    async def _reload(
        self, lost: TypesByTeam, known: dict[int, GroupTypes], resolved: dict[Pair, int | None]
    ) -> TypesByTeam:
        """Update `known` and `resolved` from the database; return the types still to insert."""
        fresh = await self._load(list(lost))
        pending: TypesByTeam = {}
        for team_id, group_types in lost.items():
            latest = fresh.get(team_id, {})
            if latest.items() <= known[team_id].items():
                log.warning("could not create group types %s for team %s", group_types, team_id)
                continue
            known[team_id] = latest
            for group_type in group_types:
                if group_type in latest:
                    resolved[(team_id, group_type)] = latest[group_type]
                else:
                    pending.setdefault(team_id, []).append(group_type)
        return pending

    async def _load(self, team_ids: list[int]) -> dict[int, GroupTypes]:
        async with self._pool.connection() as connection:
            cursor = await connection.execute(_SELECT_GROUP_TYPES, (team_ids,))
            rows = await cursor.fetchall()
        loaded: dict[int, GroupTypes] = {}
        for row in rows:
            loaded.setdefault(row["team_id"], {})[row["group_type"]] = row["group_type_index"]
        return loaded

    async def _insert(self, rows: list[Row]) -> list[Row]:
        team_ids, group_types, indexes = (list(column) for column in zip(*rows, strict=True))
        async with self._pool.connection() as connection:
            cursor = await connection.execute(_INSERT_GROUP_TYPES, (team_ids, group_types, indexes))
            found = await cursor.fetchall()
        return [(row["team_id"], row["group_type"], row["group_type_index"]) for row in found]
