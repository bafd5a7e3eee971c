"""Persons and their distinct ids: creation, `$identify`/`$create_alias`, merges, `$set`/`$set_once`.

`PersonManager.process_batch` gives the result of the original's per-event rules (reference §4.2 rules
11-19, 24 and 29, §4.3, §4.4) applied event by event, in a few round trips per batch instead of several
per event:

1. one query loads the persons of the distinct ids that need one: ids missing from the LRU of recently
   seen ids, and ids whose event sets person properties;
2. the events are walked in order over that in-memory state; new persons and property changes are
   collected, and only an alias (rare) goes to the database on the spot, after flushing what is pending;
3. a flush at the end creates the new persons in one statement and writes the property changes in one.

Writes are safe against other processes doing the same at the same time:

- A property change is kept as a pair of objects such that the person's new properties are
  `(set_once || properties) || set`, and it is written in SQL as that expression, addressed by distinct
  id. A change made concurrently by someone else is kept, and a person merged away concurrently has its
  change land on the person that absorbed it.
- New persons are inserted with their distinct ids in one statement that inserts a person only if its
  distinct id was free (`ON CONFLICT DO NOTHING`, relying on the deferred foreign key), so a person
  without distinct ids never exists. A distinct id that lost the race adopts the winner, to which its
  pending property changes are applied.
- A merge is one transaction that locks both persons (bug 11 of the original fixed). An alias that
  conflicts with another process (an id taken, a person merged away meanwhile) is tried again from a
  fresh read, up to 3 attempts; if it still fails it is given up with a warning, never raised.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
from cachetools import TTLCache
from psycopg.errors import DeadlockDetected, IntegrityError, SerializationFailure
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from plugin_server.ingestion.rules import is_illegal_distinct_id
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.jsvalues import js_string, json_text

log = logging.getLogger(__name__)

MAX_ALIAS_ATTEMPTS = 3  # the original's MAX_FAILED_PERSON_MERGE_ATTEMPTS
MAX_WRITE_ROUNDS = 3  # how often a batched write is repeated for the persons a concurrent merge moved
LRU_MAX_AGE_SECONDS = 3600
MAX_DISTINCT_ID_LENGTH = 400  # posthog_persondistinctid.distinct_id is varchar(400)
EVENTS_WITHOUT_PERSON_PROPERTIES = frozenset({"$snapshot", "$groupidentify"})

Key = tuple[int, str]  # (team id, distinct id)
Connection = psycopg.AsyncConnection[dict[str, Any]]


@dataclass(slots=True)
class PersonUpdate:
    """One event's worth of person work, given to `process_batch` in event order."""

    team_id: int
    distinct_id: str
    event: str  # '$identify', '$create_alias', '$snapshot', '$groupidentify', ...
    properties: dict[str, Any]  # final properties: may hold $set, $set_once, alias, $anon_distinct_id
    created_at: datetime  # for a new person: the event's sent_at, or else now


@dataclass(frozen=True, slots=True)
class PersonRow:
    """A person as it now is in Postgres (or was, when deleted): what ClickHouse's `person` table needs."""

    id: int
    uuid: str
    team_id: int
    created_at: datetime
    properties: dict[str, Any]
    is_identified: bool
    version: int = 0  # posthog_person.version: 0 when created, one more on every update
    is_deleted: bool = False


@dataclass(frozen=True, slots=True)
class DistinctIdRow:
    """A distinct id that now points at a person, or (is_deleted) no longer does."""

    team_id: int
    distinct_id: str
    person_uuid: str
    version: int = 0  # posthog_persondistinctid.version: 0 when added, one more on every move
    is_deleted: bool = False


PersonChange = PersonRow | DistinctIdRow


@dataclass
class PersonChanges:
    """The rows a `process_batch` call wrote, in commit order, and their outbox entries (if any); and
    `persons`, the persons of the distinct ids it loaded as it left them (written, or as read), which
    the event records of its batch can take without reading them again."""

    rows: list[PersonChange] = field(default_factory=list)
    outbox_ids: list[int] = field(default_factory=list)
    persons: dict[Key, PersonRow] = field(default_factory=dict)

    def extend(self, other: PersonChanges) -> None:
        """Add `other`'s rows and outbox entries (its persons are its call's, not these rows')."""
        self.rows.extend(other.rows)
        self.outbox_ids.extend(other.outbox_ids)


class ChangeOutbox(Protocol):
    """Where written rows are recorded, in the transaction that writes them, until a sink took them
    (ingestion/person_outbox.py)."""

    async def add(self, conn: Connection, rows: Sequence[PersonChange]) -> list[int]: ...

    async def remove(self, pool: AsyncConnectionPool[Any], ids: Sequence[int]) -> None: ...


Atomic = Callable[[], contextlib.AbstractAsyncContextManager[list[PersonChange]]]


class _RaceConditionError(Exception):
    """A person that a merge was about went away or changed owner in the meantime."""


# What another process doing the same work can cause; the alias is retried, then given up with a warning.
_CONFLICTS = (IntegrityError, DeadlockDetected, SerializationFailure, _RaceConditionError)

_PERSON_COLUMNS = "p.id, p.uuid, p.team_id, p.created_at, p.properties, p.is_identified, p.version"

_SELECT_PERSONS = f"""
SELECT d.team_id AS key_team_id, d.distinct_id AS key_distinct_id, {_PERSON_COLUMNS}
FROM unnest(%s::int[], %s::text[]) AS k(team_id, distinct_id)
JOIN posthog_persondistinctid d ON d.team_id = k.team_id AND d.distinct_id = k.distinct_id
JOIN posthog_person p ON p.id = d.person_id AND p.team_id = d.team_id
"""

# A person id is drawn first (in event order), so that the distinct id goes in before its person (the
# foreign key is deferred to the end of the statement) and a person is inserted only if its distinct id
# was free. Distinct ids go in sorted, so that two processes inserting the same ones cannot deadlock.
_INSERT_NEW_PERSONS = """
WITH input AS MATERIALIZED (
    SELECT nextval(pg_get_serial_sequence('posthog_person', 'id')) AS id, i.*
    FROM jsonb_to_recordset(%s::jsonb)
        AS i(team_id int, distinct_id text, uuid uuid, created_at timestamptz, properties jsonb)
), kept AS (
    INSERT INTO posthog_persondistinctid (distinct_id, person_id, team_id, version)
    SELECT distinct_id, id, team_id, 0 FROM input ORDER BY team_id, distinct_id
    ON CONFLICT (team_id, distinct_id) DO NOTHING
    RETURNING person_id
)
INSERT INTO posthog_person
    (id, created_at, properties, properties_last_updated_at, team_id, is_user_id, is_identified, uuid, version)
SELECT input.id, input.created_at, input.properties, '{}', input.team_id, NULL, false, input.uuid, 0
FROM input JOIN kept ON kept.person_id = input.id
RETURNING id, uuid
"""

# Persons are locked in id order first, so that two processes updating the same ones cannot deadlock.
_UPDATE_PROPERTIES = f"""
WITH k AS (
    SELECT k.*, p.id AS person_id
    FROM jsonb_to_recordset(%s::jsonb) AS k(team_id int, distinct_id text, set_once jsonb, set_props jsonb)
    JOIN posthog_persondistinctid d ON d.team_id = k.team_id AND d.distinct_id = k.distinct_id
    JOIN posthog_person p ON p.id = d.person_id
    ORDER BY p.id
    FOR UPDATE OF p
)
UPDATE posthog_person p
SET properties = (k.set_once || p.properties) || k.set_props, version = COALESCE(p.version, 0) + 1
FROM k
WHERE p.id = k.person_id
RETURNING k.team_id AS key_team_id, k.distinct_id AS key_distinct_id, {_PERSON_COLUMNS}
"""

_INSERT_PERSON_WITH_IDS = f"""
WITH new AS MATERIALIZED (SELECT nextval(pg_get_serial_sequence('posthog_person', 'id')) AS id),
ids AS (
    INSERT INTO posthog_persondistinctid (distinct_id, person_id, team_id, version)
    SELECT distinct_id, new.id, %(team_id)s::int, 0 FROM new, unnest(%(distinct_ids)s::text[]) AS distinct_id
)
INSERT INTO posthog_person AS p
    (id, created_at, properties, properties_last_updated_at, team_id, is_user_id, is_identified, uuid, version)
SELECT new.id, %(created_at)s::timestamptz, '{{}}', '{{}}', %(team_id)s::int, NULL, %(is_identified)s::bool,
       %(uuid)s::uuid, 0
FROM new
RETURNING {_PERSON_COLUMNS}
"""

_ADD_DISTINCT_ID = (
    "INSERT INTO posthog_persondistinctid (distinct_id, person_id, team_id, version) VALUES (%s, %s, %s, 0)"
)

_SET_IDENTIFIED = f"""
UPDATE posthog_person p SET is_identified = true, version = COALESCE(p.version, 0) + 1
FROM posthog_persondistinctid d
WHERE d.team_id = %s AND d.distinct_id = %s AND p.id = d.person_id AND NOT p.is_identified
RETURNING {_PERSON_COLUMNS}
"""

_LOCK_PERSONS = f"""
SELECT {_PERSON_COLUMNS} FROM posthog_person p WHERE p.id = ANY(%s) ORDER BY p.id FOR UPDATE
"""

_UPDATE_MERGED = f"""
UPDATE posthog_person p SET properties = %s, created_at = %s, is_identified = %s,
    version = COALESCE(p.version, 0) + 1
WHERE p.id = %s
RETURNING {_PERSON_COLUMNS}
"""


async def persons_of(pool: AsyncConnectionPool[Any], keys: Iterable[Key]) -> dict[Key, PersonRow]:
    """The persons these (team, distinct id) pairs point at now; pairs without a person are left out."""
    async with pool.connection() as conn:
        return await _fetch_persons(conn, keys)


def person_row(row: dict[str, Any]) -> PersonRow:
    return PersonRow(
        id=row["id"],
        uuid=str(row["uuid"]),
        team_id=row["team_id"],
        created_at=row["created_at"],
        properties=row["properties"],
        is_identified=row["is_identified"],
        version=row["version"] or 0,
    )


def _keyed_rows(rows: Iterable[dict[str, Any]]) -> dict[Key, PersonRow]:
    return {(row["key_team_id"], row["key_distinct_id"]): person_row(row) for row in rows}


def _jsonb(value: Any) -> Jsonb:
    """JSON for Postgres, with non-string keys written as strings, as the event sink and JSON.stringify do."""
    return Jsonb(value, dumps=json_text)


def _storable(distinct_id: str) -> bool:
    return len(distinct_id) <= MAX_DISTINCT_ID_LENGTH and "\x00" not in distinct_id


_ABSENT = object()  # a property the person does not have


def _same_json(a: Any, b: Any) -> bool:
    """Deep equality of JSON values where true is not 1, as the original's `!==` plus deep-equal."""
    if type(a) is str:  # most property values: decided without the checks below
        return type(b) is str and a == b
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same_json, a, b))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


# ---------------------------------------------------------------------------------- database operations


async def _fetch_persons(conn: Connection, keys: Iterable[Key]) -> dict[Key, PersonRow]:
    teams, distinct_ids = [], []
    for team_id, distinct_id in keys:
        teams.append(team_id)
        distinct_ids.append(distinct_id)
    if not teams:
        return {}
    cursor = await conn.execute(_SELECT_PERSONS, (teams, distinct_ids))
    return _keyed_rows(await cursor.fetchall())


async def _add_distinct_id(conn: Connection, person: PersonRow, distinct_id: str) -> DistinctIdRow:
    await conn.execute(_ADD_DISTINCT_ID, (distinct_id, person.id, person.team_id))
    return DistinctIdRow(person.team_id, distinct_id, person.uuid)


async def _insert_person(
    conn: Connection, team_id: int, distinct_ids: list[str], *, is_identified: bool
) -> list[PersonChange]:
    """A person with these distinct ids, created now with no properties; all or nothing."""
    params = {
        "team_id": team_id,
        "distinct_ids": distinct_ids,
        "created_at": datetime.now(UTC),
        "is_identified": is_identified,
        "uuid": uuidt(),
    }
    cursor = await conn.execute(_INSERT_PERSON_WITH_IDS, params)
    row = await cursor.fetchone()
    assert row is not None
    person = person_row(row)
    return [person, *(DistinctIdRow(team_id, distinct_id, person.uuid) for distinct_id in distinct_ids)]


async def _set_identified(conn: Connection, team_id: int, distinct_id: str) -> list[PersonChange]:
    cursor = await conn.execute(_SET_IDENTIFIED, (team_id, distinct_id))
    return [person_row(row) for row in await cursor.fetchall()]


async def _merge_people(
    conn: Connection, source: PersonRow, target: PersonRow, *, keep_identified_source: bool
) -> list[PersonChange] | None:
    """Merge `source` into `target` (§4.3) in one transaction; None when it turns out to be refused.

    Both persons are locked first, so the merge works on their latest state and a distinct id added to
    the source concurrently either moves with the others or fails its own insert (and is retried there).
    """
    async with conn.transaction():
        cursor = await conn.execute(_LOCK_PERSONS, ([source.id, target.id],))
        locked = {row["id"]: person_row(row) for row in await cursor.fetchall()}
        if len(locked) < 2:
            raise _RaceConditionError("a person to merge was deleted concurrently")
        source, target = locked[source.id], locked[target.id]
        if keep_identified_source and source.is_identified:
            return None
        cursor = await conn.execute(
            _UPDATE_MERGED,
            (
                _jsonb({**source.properties, **target.properties}),
                min(source.created_at, target.created_at),
                source.is_identified or target.is_identified,
                target.id,
            ),
        )
        merged = await cursor.fetchone()
        assert merged is not None
        await conn.execute(
            "UPDATE posthog_cohortpeople SET person_id = %s WHERE person_id = %s", (target.id, source.id)
        )
        cursor = await conn.execute(
            "UPDATE posthog_persondistinctid SET person_id = %s, version = COALESCE(version, 0) + 1 "
            "WHERE person_id = %s AND team_id = %s RETURNING distinct_id, version",
            (target.id, source.id, target.team_id),
        )
        moved = [(row["distinct_id"], row["version"]) for row in await cursor.fetchall()]
        if not moved:
            raise _RaceConditionError("the person to merge has no distinct ids left")
        await conn.execute(
            "DELETE FROM posthog_person WHERE team_id = %s AND id = %s", (source.team_id, source.id)
        )
    changes: list[PersonChange] = [person_row(merged)]
    for distinct_id, version in moved:
        changes.append(DistinctIdRow(target.team_id, distinct_id, target.uuid, version))
        changes.append(DistinctIdRow(source.team_id, distinct_id, source.uuid, version - 1, is_deleted=True))
    changes.append(replace(source, is_deleted=True))
    return changes


# ---------------------------------------------------------------------------------------- aliasing


class _Aliaser:
    """One alias of `previous` to a different `new` (rules 15-19) against the database.

    An attempt that conflicts with another process (an id taken or a person merged away meanwhile) is
    run again from a fresh read, up to MAX_ALIAS_ATTEMPTS in all, as the original retried merges.
    """

    def __init__(
        self,
        conn: Connection,
        key: Key,
        previous: str,
        *,
        identify: bool,
        atomic: Atomic,
    ) -> None:
        self.conn = conn
        self.team_id, self.new = key
        self.previous = previous
        self.identify = identify
        self.atomic = atomic  # a transaction whose written rows are recorded
        self.touched: set[int] = set()  # ids of the persons it saw, whose state in memory is now stale

    async def run(self) -> None:
        for attempt in range(1, MAX_ALIAS_ATTEMPTS + 1):
            try:
                await self._attempt()
                break
            except _CONFLICTS:
                if attempt == MAX_ALIAS_ATTEMPTS:
                    raise
        if self.identify:
            async with self.atomic() as written:
                written += await _set_identified(self.conn, self.team_id, self.new)

    async def _attempt(self) -> None:
        previous_key, new_key = (self.team_id, self.previous), (self.team_id, self.new)
        persons = await _fetch_persons(self.conn, [previous_key, new_key])
        old, new = persons.get(previous_key), persons.get(new_key)
        self.touched.update(person.id for person in (old, new) if person is not None)
        if old is None or new is None:
            await self._link(old, new)
        elif old.id != new.id:
            await self._merge(old, new)

    async def _link(self, old: PersonRow | None, new: PersonRow | None) -> None:
        """Rules 15-17: add the missing id to the person that exists, or create one person with both."""
        async with self.atomic() as written:
            if old is not None:
                written.append(await _add_distinct_id(self.conn, old, self.new))
            elif new is not None:
                written.append(await _add_distinct_id(self.conn, new, self.previous))
            else:
                written += await _insert_person(
                    self.conn, self.team_id, [self.new, self.previous], is_identified=self.identify
                )

    async def _merge(self, old: PersonRow, new: PersonRow) -> None:
        """Rule 18: merge the old person into the new one, unless $identify would merge an identified one."""
        changes = None
        async with self.atomic() as written:
            if not (self.identify and old.is_identified):
                changes = await _merge_people(self.conn, old, new, keep_identified_source=self.identify)
            written += changes or []
        if changes is None:
            log.warning("refused to merge an already identified user via an $identify call")


# ---------------------------------------------------------------------------------------- batching


@dataclass(slots=True, eq=False)
class _Person:
    """A person as this batch knows it, with the property changes not yet written.

    Only changes that change something are kept, composed so that writing
    `(set_once || properties) || set` on the row gives what applying the events one by one gives, here
    and on a row that someone else changed meanwhile.
    """

    team_id: int
    distinct_id: str  # one of its distinct ids: how writes address it, so they follow merges
    uuid: str
    created_at: datetime
    properties: dict[str, Any]
    is_identified: bool = False
    id: int | None = None  # None while its creation is pending
    version: int = 0
    set_once: dict[str, Any] = field(default_factory=dict)
    set: dict[str, Any] = field(default_factory=dict)
    # Changes were dropped (its distinct ids went elsewhere): `properties` is not what was written.
    dropped: bool = False

    @classmethod
    def from_row(cls, key: Key, row: PersonRow) -> _Person:
        return cls(
            key[0],
            key[1],
            row.uuid,
            row.created_at,
            dict(row.properties),
            row.is_identified,
            row.id,
            row.version,
        )

    def row(self) -> PersonRow | None:
        """The person as written (None while it is not, or when its last changes were dropped)."""
        if self.id is None or self.dropped or self.pending:
            return None
        return PersonRow(
            self.id,
            self.uuid,
            self.team_id,
            self.created_at,
            self.properties,
            self.is_identified,
            self.version,
        )

    @property
    def pending(self) -> bool:
        return bool(self.set or self.set_once)

    def apply(self, to_set: dict[str, Any], to_set_once: dict[str, Any]) -> None:
        """Rule 29: $set_once for keys the person lacks, then $set for values that differ."""
        if not to_set_once.keys() <= self.properties.keys():  # most events: it has them all already
            for key, value in to_set_once.items():
                if key not in self.properties:
                    self.properties[key] = self.set_once[key] = value
        for key, value in to_set.items():
            current = self.properties.get(key, _ABSENT)
            if current is _ABSENT or not (
                # text, the most common value, compared here (as _same_json would): a call costs more
                (type(value) is str and current == value)
                if type(current) is str
                else _same_json(current, value)
            ):
                self.properties[key] = self.set[key] = value

    def refresh(self, row: PersonRow) -> None:
        """Take the row's state, with the pending changes still applied over it."""
        self.id, self.uuid, self.created_at = row.id, row.uuid, row.created_at
        self.is_identified, self.version = row.is_identified, row.version
        self.properties = {**self.set_once, **row.properties, **self.set}

    def clear_pending(self) -> None:
        self.set_once, self.set = {}, {}


@dataclass(slots=True)
class _Step:
    """What one event asks of persons, worked out once."""

    key: Key
    created_at: datetime
    illegal: bool  # rule 11: no alias or merge on this distinct id
    alias_of: str | None  # the previous distinct id to alias to this one
    identify: bool
    to_set: dict[str, Any]  # with to_set_once: the event sets properties when either is not empty
    to_set_once: dict[str, Any]


_ALIASING_EVENTS = frozenset({"$create_alias", "$identify"})


def _alias_of(update: PersonUpdate) -> tuple[str | None, bool]:
    """Rules 12-13: the previous distinct id to alias, and whether the alias identifies the person."""
    if update.event == "$create_alias":
        previous, identify = update.properties.get("alias"), False
    elif update.event == "$identify":
        previous, identify = update.properties.get("$anon_distinct_id"), True
        if not previous:
            return None, False
    else:
        return None, False
    if not isinstance(previous, str | int | float):
        return None, False
    previous = js_string(previous)
    if previous == update.distinct_id:
        return None, False  # rule 14: nothing to do, and the person is not marked identified
    if not _storable(previous):
        log.warning("not aliasing %r: the previous distinct id cannot be stored", update.distinct_id)
        return None, False
    return previous, identify


def _step(update: PersonUpdate) -> _Step:
    """The event's step. This runs for every event, so its common case (no alias) calls no helpers."""
    to_set: dict[str, Any] = {}
    to_set_once: dict[str, Any] = {}
    if update.event not in EVENTS_WITHOUT_PERSON_PROPERTIES:
        properties = update.properties
        if isinstance(given := properties.get("$set"), dict):
            to_set = given
        if isinstance(given := properties.get("$set_once"), dict):
            to_set_once = given
    illegal = is_illegal_distinct_id(update.distinct_id)
    alias_of, identify = (
        _alias_of(update) if update.event in _ALIASING_EVENTS and not illegal else (None, False)
    )
    created_at = update.created_at
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    key = (update.team_id, update.distinct_id)
    return _Step(key, created_at, illegal, alias_of, identify, to_set, to_set_once)


class _BatchRun:
    """One `process_batch` call: what it knows of each distinct id, and the writes it has pending."""

    def __init__(self, manager: PersonManager, conn: Connection) -> None:
        self.manager = manager
        self.conn = conn
        # A distinct id maps to its person, or None when it has none. Ids seen recently (LRU) whose
        # events set no properties are left out: they need nothing.
        self.known: dict[Key, _Person | None] = {}
        self.by_id: dict[int, _Person] = {}
        self.new: list[_Person] = []
        self.changes = PersonChanges()  # the rows written so far, each after its commit

    @contextlib.asynccontextmanager
    async def atomic(self) -> AsyncIterator[list[PersonChange]]:
        """The rows written in this block, recorded in the outbox in the same transaction (if there is an
        outbox), are added to `changes` once committed."""
        written: list[PersonChange] = []
        outbox = self.manager.outbox
        if outbox is None:
            yield written
            self.changes.rows += written
            return
        async with self.conn.transaction():
            yield written
            ids = await outbox.add(self.conn, written)
        self.changes.extend(PersonChanges(written, ids))

    def persons(self) -> dict[Key, PersonRow]:
        """The persons of the distinct ids this run knows, as written or as read (see `_Person.row`)."""
        found = {}
        for key, person in self.known.items():
            row = None if person is None else person.row()
            if row is not None:
                found[key] = row
        return found

    async def load(self, keys: Iterable[Key]) -> None:
        keys = list(keys)
        rows = await _fetch_persons(self.conn, keys)
        for key in keys:
            row = rows.get(key)
            if row is None:
                self.known[key] = None
            else:
                self.adopt(key, row)

    def adopt(self, key: Key, row: PersonRow) -> _Person:
        """Point `key` at the row's person, one object per person."""
        person = self.by_id.get(row.id)
        if person is None:
            person = self.by_id[row.id] = _Person.from_row(key, row)
        else:
            person.refresh(row)
        self.known[key] = person
        return person

    async def reload(self, person_ids: set[int], also: Iterable[Key] = ()) -> None:
        """Load again the distinct ids of these persons (whose rows changed hands), and `also`.

        Pending changes of a dropped person are applied to whichever person its distinct id has now.
        """
        dropped = [person for person_id in person_ids if (person := self.by_id.pop(person_id, None))]
        keys = [key for key, person in self.known.items() if person is not None and person.id in person_ids]
        for key in keys:
            del self.known[key]
        await self.load({*keys, *also})
        for person in dropped:
            if person.pending:
                heir = self.known.get((person.team_id, person.distinct_id))
                if heir is None:
                    log.warning("dropped the property changes of a person whose distinct ids are gone")
                else:
                    heir.apply(person.set, person.set_once)

    async def apply(self, step: _Step) -> None:
        if step.illegal:
            self.manager.illegal_distinct_ids += 1
        elif step.alias_of is not None:
            await self.alias(step.key, step.alias_of, identify=step.identify)
        self.apply_properties(step)

    def apply_properties(self, step: _Step) -> None:
        """The step's person (created if it has none) with the step's property changes pending."""
        if step.key not in self.known:
            return  # seen recently, so it has a person, and this event sets no properties
        person = self.known[step.key]
        if person is None:
            person = _Person(*step.key, uuid=uuidt(), created_at=step.created_at, properties={})
            self.known[step.key] = person
            self.new.append(person)
        if step.to_set or step.to_set_once:  # tested inline: a property costs a call for every event
            person.apply(step.to_set, step.to_set_once)

    async def alias(self, key: Key, previous: str, *, identify: bool) -> None:
        keys = [key, (key[0], previous)]
        # The persons of both ids must be in the database as the events so far left them. Pending work
        # of other persons can wait, unless an id is not loaded: then its person is not known here.
        await self.flush(keys if all(k in self.known for k in keys) else None)
        aliaser = _Aliaser(self.conn, key, previous, identify=identify, atomic=self.atomic)
        try:
            await aliaser.run()
        except _CONFLICTS as error:
            self.manager.alias_failures += 1
            log.warning("aliasing %r to %r failed after retries: %s", previous, key[1], error)
        await self.reload(aliaser.touched, keys)

    async def flush(self, keys: Sequence[Key] | None = None) -> None:
        """Write the pending creations and property changes: all, or those of these distinct ids' persons."""
        await self._create_new(keys)
        await self._write_changes(keys)

    def _selected(self, keys: Sequence[Key] | None) -> Callable[[_Person], bool]:
        if keys is None:
            return lambda person: True
        persons = {person for key in keys if (person := self.known.get(key)) is not None}
        return persons.__contains__

    async def _create_new(self, keys: Sequence[Key] | None) -> None:
        for _ in range(MAX_WRITE_ROUNDS):
            selected = self._selected(keys)
            new = [person for person in self.new if selected(person)]
            if not new:
                return
            self.new = [person for person in self.new if not selected(person)]
            async with self.atomic() as written:
                created = await _insert_new_persons(self.conn, new)
                written += _creation_changes(new, created)
            losers = [person for person in new if person.uuid not in created]
            for person in new:
                if person.uuid in created:
                    person.id = created[person.uuid]
                    person.clear_pending()
                    self.by_id[person.id] = person
            if losers:
                await self._adopt_winners(losers)
        selected = self._selected(keys)
        given_up = [person for person in self.new if selected(person)]
        if given_up:
            log.warning("gave up creating %d persons whose distinct ids kept changing hands", len(given_up))
            self.new = [person for person in self.new if not selected(person)]

    async def _adopt_winners(self, losers: list[_Person]) -> None:
        """Distinct ids created concurrently elsewhere: take that person, with our pending changes."""
        keys = [(person.team_id, person.distinct_id) for person in losers]
        rows = await _fetch_persons(self.conn, keys)
        for key, loser in zip(keys, losers, strict=True):
            row = rows.get(key)
            if row is None:
                self.new.append(loser)  # the winner was gone again by now: try once more
            else:
                self.adopt(key, row).apply(loser.set, loser.set_once)

    async def _write_changes(self, keys: Sequence[Key] | None) -> None:
        for _ in range(MAX_WRITE_ROUNDS):
            selected = self._selected(keys)
            pending = {
                person_id: person
                for person_id, person in self.by_id.items()
                if person.pending and selected(person)
            }
            if not pending:
                return
            async with self.atomic() as written:
                rows = await _write_properties(self.conn, list(pending.values()))
                written += rows.values()
            moved: set[int] = set()
            for person_id, person in pending.items():
                row = rows.get((person.team_id, person.distinct_id))
                if row is None:
                    continue  # its person got updated through another id (a concurrent merge): next round
                person.clear_pending()
                if row.id == person_id:
                    person.refresh(row)
                else:
                    moved.add(person_id)  # merged into another person concurrently
            if moved:
                await self.reload(moved)
        selected = self._selected(keys)
        left = [person for person in self.by_id.values() if person.pending and selected(person)]
        if left:
            log.warning("dropped the property changes of %d persons whose distinct ids are gone", len(left))
            for person in left:
                person.clear_pending()
                person.dropped = True


async def _insert_new_persons(conn: Connection, persons: list[_Person]) -> dict[str, int]:
    """Create the persons whose distinct id is still free; answer uuid -> id of those created."""
    rows = [
        {
            "team_id": person.team_id,
            "distinct_id": person.distinct_id,
            "uuid": person.uuid,
            "created_at": person.created_at,
            "properties": person.properties,
        }
        for person in persons
    ]
    cursor = await conn.execute(_INSERT_NEW_PERSONS, (_jsonb(rows),))
    return {str(row["uuid"]): row["id"] for row in await cursor.fetchall()}


def _creation_changes(persons: list[_Person], created: dict[str, int]) -> list[PersonChange]:
    changes: list[PersonChange] = []
    for person in persons:
        person_id = created.get(person.uuid)
        if person_id is not None:
            changes.append(
                PersonRow(
                    person_id, person.uuid, person.team_id, person.created_at, dict(person.properties), False
                )
            )
            changes.append(DistinctIdRow(person.team_id, person.distinct_id, person.uuid))
    return changes


async def _write_properties(conn: Connection, persons: list[_Person]) -> dict[Key, PersonRow]:
    """Apply the pending changes; answer the rows written, by the distinct id they were addressed by."""
    rows = [
        {"team_id": p.team_id, "distinct_id": p.distinct_id, "set_once": p.set_once, "set_props": p.set}
        for p in persons
    ]
    cursor = await conn.execute(_UPDATE_PROPERTIES, (_jsonb(rows),))
    return _keyed_rows(await cursor.fetchall())


# ---------------------------------------------------------------------------------------- manager


class PersonManager:
    """Keeps persons and distinct ids up to date for a stream of event batches (one per worker).

    `process_batch` answers the person and distinct-id rows it wrote, each after its commit: what a
    PersonSink mirrors (ClickHouse's `person` and `person_distinct_id` tables). With an `outbox`, each
    write also records its rows there in its own transaction, until `delivered` says the sink took them.
    """

    def __init__(
        self, pool: AsyncConnectionPool[Any], *, lru_size: int, outbox: ChangeOutbox | None = None
    ) -> None:
        self._pool = pool
        self.outbox = outbox
        # Rows committed by a call that then failed: the next call answers them first, so that they
        # still reach the sink (the failed batch is run again, and finds nothing left to change).
        self._unanswered = PersonChanges()
        # (team, distinct id) of ids known to have a person (the original's DISTINCT_ID_LRU_SIZE).
        self._seen: TTLCache[Key, bool] | None = (
            TTLCache(maxsize=lru_size, ttl=LRU_MAX_AGE_SECONDS) if lru_size > 0 else None
        )
        self.illegal_distinct_ids = 0
        self.alias_failures = 0
        self.unstorable_distinct_ids = 0

    async def process_batch(self, updates: Sequence[PersonUpdate]) -> PersonChanges:
        """Apply the person rules of these events, in order; answer the rows written, in commit order.

        Conflicts with other processes are resolved; errors of the database itself (connection lost...)
        propagate, and the batch can be run again. What such a failed call committed before the error is
        answered by the next call, ahead of its own rows.
        """
        changes, self._unanswered = self._unanswered, PersonChanges()
        changes.persons = {}  # of an earlier call: not what this one leaves
        updates = [update for update in updates if _storable(update.distinct_id) or self._refused(update)]
        if not updates:
            return changes
        steps = [_step(update) for update in updates]
        unseen = {key for key in dict.fromkeys(step.key for step in steps) if not self._recently_seen(key)}
        wanted = unseen.union(step.key for step in steps if step.to_set or step.to_set_once)
        async with self._pool.connection() as conn:
            run = _BatchRun(self, conn)
            try:
                await run.load(wanted)
                for step in steps:
                    if step.illegal or step.alias_of is not None:
                        await run.apply(step)
                    else:  # most events: no awaiting, so no coroutine each
                        run.apply_properties(step)
                await run.flush()
            except BaseException:
                changes.extend(run.changes)
                self.hand_back(changes)
                raise
        self._remember(unseen)
        changes.extend(run.changes)
        changes.persons = run.persons()
        return changes

    def hand_back(self, changes: PersonChanges) -> None:
        """Rows answered by `process_batch` that could not be passed on: the next call answers them again."""
        changes.extend(self._unanswered)
        self._unanswered = changes

    async def delivered(self, changes: PersonChanges) -> None:
        """The sink took these rows: forget their outbox entries."""
        if self.outbox is not None:
            await self.outbox.remove(self._pool, changes.outbox_ids)

    def _refused(self, update: PersonUpdate) -> bool:
        """Count and log an event whose distinct id cannot be stored; False, to leave it out."""
        self.unstorable_distinct_ids += 1
        log.warning("no person for distinct id %.50r...: too long or has a NUL character", update.distinct_id)
        return False

    def _recently_seen(self, key: Key) -> bool:
        if self._seen is None:
            return False
        if key not in self._seen:
            return False
        self._seen[key] = True  # a hit makes the entry young again, as the original's updateAgeOnGet
        return True

    def _remember(self, keys: Iterable[Key]) -> None:
        if self._seen is not None:
            for key in keys:
                self._seen[key] = True
