"""Persons, distinct ids, aliases, merges and person properties on a real Postgres.

Scenarios ported from the original's tests/shared/process-event.ts, plus batching, races and speed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.postgres import open_pool
from plugin_server.db.teams import CreatedTeam, create_organization_and_team
from plugin_server.ingestion import persons as persons_module
from plugin_server.ingestion.persons import (
    MAX_DISTINCT_ID_LENGTH,
    DistinctIdRow,
    PersonChanges,
    PersonManager,
    PersonRow,
    PersonUpdate,
    persons_of,
)
from plugin_server.ingestion.uuidt import uuidt

SyncConnection = psycopg.Connection[Any]
NOW = datetime(2021, 6, 1, 12, 0, tzinfo=UTC)


# ------------------------------------------------------------------------------------------ helpers


def create_person(
    db: SyncConnection,
    team_id: int,
    distinct_ids: list[str],
    properties: dict[str, Any] | None = None,
    *,
    created_at: datetime = NOW,
    is_identified: bool = False,
) -> int:
    row = db.execute(
        """INSERT INTO posthog_person (created_at, properties, properties_last_updated_at, team_id, is_identified, uuid)
           VALUES (%s, %s, '{}', %s, %s, %s) RETURNING id""",
        (created_at, Jsonb(properties or {}), team_id, is_identified, uuidt()),
    ).fetchone()
    assert row is not None
    for distinct_id in distinct_ids:
        db.execute(
            "INSERT INTO posthog_persondistinctid (distinct_id, person_id, team_id) VALUES (%s, %s, %s)",
            (distinct_id, row[0], team_id),
        )
    return int(row[0])


def persons(db: SyncConnection) -> list[dict[str, Any]]:
    """Every person with its distinct ids in insertion order, oldest person first."""
    rows = db.execute(
        """SELECT p.id, p.team_id, p.properties, p.is_identified, p.created_at,
                  array_remove(array_agg(d.distinct_id ORDER BY d.id), NULL) AS distinct_ids
           FROM posthog_person p LEFT JOIN posthog_persondistinctid d ON d.person_id = p.id
           GROUP BY p.id ORDER BY p.id"""
    ).fetchall()
    keys = ("id", "team_id", "properties", "is_identified", "created_at", "distinct_ids")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def identities(db: SyncConnection) -> list[tuple[list[str], bool]]:
    """(distinct ids, is identified) of every person, as `persons` orders them."""
    return [(p["distinct_ids"], p["is_identified"]) for p in persons(db)]


def clear_persons(db: SyncConnection) -> None:
    db.execute("TRUNCATE posthog_cohortpeople, posthog_persondistinctid, posthog_person")


def person_of(db: SyncConnection, distinct_id: str, team_id: int = 2) -> dict[str, Any]:
    [person] = [p for p in persons(db) if p["team_id"] == team_id and distinct_id in p["distinct_ids"]]
    return person


def event(
    distinct_id: str,
    name: str = "some_event",
    properties: dict[str, Any] | None = None,
    *,
    team_id: int = 2,
    created_at: datetime = NOW,
) -> PersonUpdate:
    return PersonUpdate(team_id, distinct_id, name, properties or {}, created_at)


def identify(distinct_id: str, anon_distinct_id: str, **properties: Any) -> PersonUpdate:
    return event(distinct_id, "$identify", {"$anon_distinct_id": anon_distinct_id, **properties})


def create_alias(distinct_id: str, alias: Any) -> PersonUpdate:
    return event(distinct_id, "$create_alias", {"alias": alias})


class CheckedPersonManager(PersonManager):
    """A PersonManager whose every batch checks the persons it hands on (`PersonChanges.persons`, which
    the ClickHouse event records use instead of reading them again) against Postgres."""

    async def process_batch(self, updates: Sequence[PersonUpdate]) -> PersonChanges:
        changes = await super().process_batch(updates)
        assert changes.persons == await persons_of(self._pool, changes.persons), "persons handed on"
        return changes


@pytest.fixture
def manager(team: CreatedTeam, pool: AsyncConnectionPool[Any]) -> PersonManager:
    return CheckedPersonManager(pool, lru_size=10_000)


class Client:
    """A posthog-js-like client: it keeps the current distinct id and sends the previous one on identify."""

    def __init__(self, manager: PersonManager) -> None:
        self.manager = manager
        self.current = "anonymous_id"

    async def capture(self, name: str) -> None:
        await self.manager.process_batch([event(self.current, name)])

    async def identify(self, distinct_id: str) -> None:
        previous, self.current = self.current, distinct_id
        await self.manager.process_batch([identify(distinct_id, previous)])

    async def alias(self, alias: str) -> None:
        await self.manager.process_batch([create_alias(self.current, alias)])


# ------------------------------------------------------------------------------ creation, properties


async def test_capture_new_person(manager: PersonManager, clean_db: SyncConnection) -> None:
    sent_at = datetime(2021, 5, 1, tzinfo=UTC)
    first = {
        "$set": {"utm_medium": "twitter", "gclid": "GOOGLE ADS ID"},
        "$set_once": {"$initial_browser": "Chrome", "$initial_browser_version": False},
    }
    await manager.process_batch([event("2", "$autocapture", first, created_at=sent_at)])
    second = {"$set": {"utm_medium": "instagram"}, "$set_once": {"$initial_browser": "Firefox"}}
    await manager.process_batch([event("2", "$autocapture", second)])

    [person] = persons(clean_db)
    assert person["distinct_ids"] == ["2"]
    assert person["created_at"] == sent_at
    assert person["is_identified"] is False
    assert person["properties"] == {
        "$initial_browser": "Chrome",
        "$initial_browser_version": False,
        "utm_medium": "instagram",
        "gclid": "GOOGLE ADS ID",
    }
    row = clean_db.execute("SELECT properties_last_updated_at, is_user_id FROM posthog_person").fetchone()
    assert row == ({}, None)


async def test_event_without_properties_creates_a_person_once(
    manager: PersonManager, clean_db: SyncConnection
) -> None:
    await manager.process_batch([event("a"), event("a"), event("b")])
    await manager.process_batch([event("a"), event("b")])
    assert [p["distinct_ids"] for p in persons(clean_db)] == [["a"], ["b"]]


async def test_set_on_existing_and_new_person(manager: PersonManager, clean_db: SyncConnection) -> None:
    create_person(clean_db, 2, ["distinct_id1"])
    props = {"$set": {"a_prop": "test-1", "c_prop": "test-1"}}
    await manager.process_batch(
        [event("distinct_id1", properties=props), event("distinct_id2", properties=props)]
    )
    assert [p["properties"] for p in persons(clean_db)] == [{"a_prop": "test-1", "c_prop": "test-1"}] * 2
    await manager.process_batch(
        [event("distinct_id1", properties={"$set": {"a_prop": "test-2", "b_prop": "b"}})]
    )
    assert person_of(clean_db, "distinct_id1")["properties"] == {
        "a_prop": "test-2",
        "b_prop": "b",
        "c_prop": "test-1",
    }


async def test_set_once_does_not_overwrite(manager: PersonManager, clean_db: SyncConnection) -> None:
    create_person(clean_db, 2, ["distinct_id1"], {"null_prop": None})
    once = {"$set_once": {"a_prop": "test-1", "c_prop": "test-1", "null_prop": "x"}}
    await manager.process_batch([event("distinct_id1", "$identify", once)])
    assert person_of(clean_db, "distinct_id1")["properties"] == {
        "a_prop": "test-1",
        "c_prop": "test-1",
        "null_prop": None,
    }
    again = {"$set_once": {"a_prop": "test-2", "b_prop": "test-2b"}}
    await manager.process_batch([event("distinct_id1", "some_other_event", again)])
    person = person_of(clean_db, "distinct_id1")
    assert person["properties"] == {
        "a_prop": "test-1",
        "b_prop": "test-2b",
        "c_prop": "test-1",
        "null_prop": None,
    }
    assert person["is_identified"] is False


async def test_set_wins_over_set_once_in_one_event(manager: PersonManager, clean_db: SyncConnection) -> None:
    props = {"$set": {"key1": "value1", "both": "set"}, "$set_once": {"key1_once": "value1", "both": "once"}}
    await manager.process_batch([event("distinct_id1", properties=props)])
    assert person_of(clean_db, "distinct_id1")["properties"] == {
        "key1": "value1",
        "both": "set",
        "key1_once": "value1",
    }


async def test_set_is_strict_about_types(manager: PersonManager, clean_db: SyncConnection) -> None:
    create_person(clean_db, 2, ["d"], {"flag": True, "n": 1, "text": "1", "number": 1, "same": "x"})
    await manager.process_batch(
        [event("d", properties={"$set": {"flag": 1, "n": 1.0, "text": 1, "number": "1", "same": "x"}})]
    )
    assert person_of(clean_db, "d")["properties"] == {
        "flag": 1,
        "n": 1,
        "text": 1,
        "number": "1",
        "same": "x",
    }


async def test_nested_values_are_compared_deeply(
    pool: AsyncConnectionPool[Any], clean_db: SyncConnection, team: CreatedTeam
) -> None:
    manager = PersonManager(pool, lru_size=10)
    create_person(clean_db, 2, ["d"], {"o": {"a": [1, {"b": True}]}, "l": [1, 2]})
    changes = await manager.process_batch(
        [event("d", properties={"$set": {"o": {"a": [1, {"b": True}]}, "l": [1, 2]}})]
    )
    assert changes.rows == []
    await manager.process_batch([event("d", properties={"$set": {"o": {"a": [1, {"b": 1}]}, "l": [1, 2]}})])
    assert person_of(clean_db, "d")["properties"] == {"o": {"a": [1, {"b": 1}]}, "l": [1, 2]}


async def test_odd_alias_values(manager: PersonManager, clean_db: SyncConnection) -> None:
    """A missing alias or empty $anon_distinct_id aliases nothing; a number is taken as its text."""
    await manager.process_batch(
        [
            event("a", "$create_alias", {}),
            identify("b", ""),
            create_alias("c", 42),
            create_alias("d", "x" * (MAX_DISTINCT_ID_LENGTH + 1)),
        ]
    )
    assert [p["distinct_ids"] for p in persons(clean_db)] == [["a"], ["b"], ["c", "42"], ["d"]]


async def test_unstorable_distinct_ids_are_skipped(manager: PersonManager, clean_db: SyncConnection) -> None:
    await manager.process_batch([event("x" * (MAX_DISTINCT_ID_LENGTH + 1)), event("nul\x00"), event("ok")])
    assert [p["distinct_ids"] for p in persons(clean_db)] == [["ok"]]
    assert manager.unstorable_distinct_ids == 2
    await manager.process_batch([])


async def test_snapshot_and_groupidentify_create_persons_but_set_nothing(
    manager: PersonManager, clean_db: SyncConnection
) -> None:
    await manager.process_batch(
        [
            event("some_new_id", "$snapshot", {"$session_id": "abcf-efg", "$set": {"a": 1}}),
            event("group_member", "$groupidentify", {"$group_type": "org", "$set": {"a": 1}}),
        ]
    )
    assert [(p["distinct_ids"], p["properties"]) for p in persons(clean_db)] == [
        (["some_new_id"], {}),
        (["group_member"], {}),
    ]


async def test_unchanged_properties_are_not_written(
    pool: AsyncConnectionPool[Any], clean_db: SyncConnection, team: CreatedTeam
) -> None:
    manager = PersonManager(pool, lru_size=10)
    create_person(clean_db, 2, ["d"], {"a": 1})
    before = clean_db.execute("SELECT xmin::text FROM posthog_person").fetchone()
    changes = await manager.process_batch([event("d", properties={"$set": {"a": 1}, "$set_once": {"a": 2}})])
    assert clean_db.execute("SELECT xmin::text FROM posthog_person").fetchone() == before
    assert changes.rows == []


async def test_sequences_in_one_batch_equal_one_event_per_batch(
    pool: AsyncConnectionPool[Any], clean_db: SyncConnection, team: CreatedTeam
) -> None:
    """$set/$set_once over a batch give what the original gives applying them one event at a time."""
    rng = random.Random(7)
    updates = []
    for _ in range(300):
        keys = rng.sample(["a", "b", "c", "d"], rng.randint(0, 2))
        props = {rng.choice(["$set", "$set_once"]): {key: rng.randint(0, 3) for key in keys}}
        updates.append(event(rng.choice(["x", "y", "z"]), properties=props))
    one_by_one = PersonManager(pool, lru_size=0)
    for update in updates:
        await one_by_one.process_batch([update])
    expected = {p["distinct_ids"][0]: p["properties"] for p in persons(clean_db)}
    clear_persons(clean_db)
    await PersonManager(pool, lru_size=0).process_batch(updates)
    assert {p["distinct_ids"][0]: p["properties"] for p in persons(clean_db)} == expected


def random_events(rng: random.Random, count: int) -> list[PersonUpdate]:
    """Events of a few users: property changes, $identify and $create_alias between their ids."""
    ids = ["a", "b", "c", "d", "e", "f"]
    updates = []
    for _ in range(count):
        keys = rng.sample(["k1", "k2", "k3"], rng.randint(0, 2))
        props: dict[str, Any] = {rng.choice(["$set", "$set_once"]): {key: rng.randint(0, 3) for key in keys}}
        kind = rng.random()
        if kind < 0.1:
            updates.append(identify(rng.choice(ids), rng.choice(ids), **props))
        elif kind < 0.15:
            updates.append(create_alias(rng.choice(ids), rng.choice(ids)))
        else:
            updates.append(event(rng.choice(ids), properties=props))
    return updates


def person_states(db: SyncConnection) -> list[tuple[list[str], dict[str, Any], bool]]:
    return sorted((sorted(p["distinct_ids"]), p["properties"], p["is_identified"]) for p in persons(db))


@pytest.mark.parametrize("seed", range(8))
async def test_a_batch_with_aliases_equals_one_event_per_batch(
    pool: AsyncConnectionPool[Any], clean_db: SyncConnection, team: CreatedTeam, seed: int
) -> None:
    """Also in batches of random sizes, so that the LRU leaves some ids unloaded."""
    rng = random.Random(seed)
    updates = random_events(rng, 120)
    one_by_one = PersonManager(pool, lru_size=0)
    for update in updates:
        await one_by_one.process_batch([update])
    expected = person_states(clean_db)
    clear_persons(clean_db)
    batched, start = PersonManager(pool, lru_size=10), 0
    while start < len(updates):
        size = rng.choice([1, 5, 30, 120])
        await batched.process_batch(updates[start : start + size])
        start += size
    assert person_states(clean_db) == expected


# ------------------------------------------------------------------------------------------ aliases


async def test_merge_people(manager: PersonManager, clean_db: SyncConnection) -> None:
    create_person(
        clean_db, 2, ["person_0"], {"$os": "Microsoft"}, created_at=datetime(2020, 1, 1, tzinfo=UTC)
    )
    create_person(
        clean_db,
        2,
        ["person_1"],
        {"$os": "Chrome", "$browser": "Chrome"},
        created_at=datetime(2019, 7, 1, tzinfo=UTC),
    )
    await manager.process_batch([create_alias("person_0", "person_1")])
    [person] = persons(clean_db)
    assert person["properties"] == {"$os": "Microsoft", "$browser": "Chrome"}
    assert person["distinct_ids"] == ["person_0", "person_1"]
    assert person["created_at"] == datetime(2019, 7, 1, tzinfo=UTC)
    assert person["is_identified"] is False


async def test_alias(manager: PersonManager, clean_db: SyncConnection) -> None:
    create_person(clean_db, 2, ["old_distinct_id"])
    await manager.process_batch([create_alias("new_distinct_id", "old_distinct_id")])
    assert [p["distinct_ids"] for p in persons(clean_db)] == [["old_distinct_id", "new_distinct_id"]]


async def test_alias_reverse(manager: PersonManager, clean_db: SyncConnection) -> None:
    create_person(clean_db, 2, ["old_distinct_id"])
    await manager.process_batch([create_alias("old_distinct_id", "new_distinct_id")])
    assert [p["distinct_ids"] for p in persons(clean_db)] == [["old_distinct_id", "new_distinct_id"]]


async def test_alias_twice(manager: PersonManager, clean_db: SyncConnection) -> None:
    create_person(clean_db, 2, ["old_distinct_id"])
    await manager.process_batch([create_alias("new_distinct_id", "old_distinct_id")])
    assert [p["distinct_ids"] for p in persons(clean_db)] == [["old_distinct_id", "new_distinct_id"]]
    create_person(clean_db, 2, ["old_distinct_id_2"])
    await manager.process_batch([create_alias("new_distinct_id", "old_distinct_id_2")])
    assert [p["distinct_ids"] for p in persons(clean_db)] == [
        ["old_distinct_id", "new_distinct_id", "old_distinct_id_2"]
    ]


async def test_alias_before_person(manager: PersonManager, clean_db: SyncConnection) -> None:
    await manager.process_batch([create_alias("new_distinct_id", "old_distinct_id")])
    [person] = persons(clean_db)
    assert person["distinct_ids"] == ["new_distinct_id", "old_distinct_id"]
    assert person["properties"] == {}
    assert person["is_identified"] is False


async def test_alias_both_existing_merges_properties(
    manager: PersonManager, clean_db: SyncConnection
) -> None:
    create_person(
        clean_db, 2, ["old_distinct_id"], {"key_on_both": "old value both", "key_on_old": "old value"}
    )
    create_person(
        clean_db, 2, ["new_distinct_id"], {"key_on_both": "new value both", "key_on_new": "new value"}
    )
    await manager.process_batch([create_alias("new_distinct_id", "old_distinct_id")])
    [person] = persons(clean_db)
    assert person["distinct_ids"] == ["old_distinct_id", "new_distinct_id"]
    assert person["properties"] == {
        "key_on_both": "new value both",
        "key_on_new": "new value",
        "key_on_old": "old value",
    }


async def test_merge_moves_cohort_people_and_deletes_the_source(
    manager: PersonManager, clean_db: SyncConnection
) -> None:
    old = create_person(clean_db, 2, ["old"])
    new = create_person(clean_db, 2, ["new"])
    row = clean_db.execute(
        "INSERT INTO posthog_cohort (name, team_id) VALUES ('c', 2) RETURNING id"
    ).fetchone()
    assert row is not None
    clean_db.execute("INSERT INTO posthog_cohortpeople (cohort_id, person_id) VALUES (%s, %s)", (row[0], old))
    await manager.process_batch([create_alias("new", "old")])
    assert [p["id"] for p in persons(clean_db)] == [new]
    assert clean_db.execute("SELECT person_id FROM posthog_cohortpeople").fetchall() == [(new,)]


async def test_identify_with_illegal_ids_does_not_merge(
    manager: PersonManager, clean_db: SyncConnection
) -> None:
    create_person(clean_db, 2, ["im an anonymous id"])
    expected_count = 1
    for distinct_id in ["distinctId", "  ", "NaN", "undefined", "None", "0", "Nan"]:
        create_person(clean_db, 2, [distinct_id])
        await manager.process_batch([identify(distinct_id, "im an anonymous id")])
        if distinct_id != "Nan":  # 'Nan' is allowed, so it merges and no person is added
            expected_count += 1
        assert len(persons(clean_db)) == expected_count, distinct_id
    assert manager.illegal_distinct_ids == 6


async def test_illegal_ids_are_counted_and_still_get_persons(
    manager: PersonManager, clean_db: SyncConnection
) -> None:
    await manager.process_batch(
        [create_alias("anonymous", "someone"), event("null", properties={"$set": {"a": 1}})]
    )
    assert [(p["distinct_ids"], p["properties"]) for p in persons(clean_db)] == [
        (["anonymous"], {}),
        (["null"], {"a": 1}),
    ]
    assert manager.illegal_distinct_ids == 2


async def test_identify_with_anonymous_id(manager: PersonManager, clean_db: SyncConnection) -> None:
    create_person(clean_db, 2, ["anonymous_id"])
    update = identify("new_distinct_id", "anonymous_id", **{"$set": {"a_prop": "test"}})
    await manager.process_batch([update])
    [person] = persons(clean_db)
    assert person["distinct_ids"] == ["anonymous_id", "new_distinct_id"]
    assert person["properties"] == {"a_prop": "test"}
    assert person["is_identified"] is True
    await manager.process_batch([update])  # can happen again without errors
    assert len(persons(clean_db)) == 1


async def test_identify_with_anonymous_id_already_created(
    manager: PersonManager, clean_db: SyncConnection
) -> None:
    create_person(clean_db, 2, ["anonymous_id"])
    create_person(clean_db, 2, ["new_distinct_id"], {"email": "someone@gmail.com"})
    await manager.process_batch([identify("new_distinct_id", "anonymous_id")])
    [person] = persons(clean_db)
    assert person["distinct_ids"] == ["anonymous_id", "new_distinct_id"]
    assert person["properties"]["email"] == "someone@gmail.com"
    assert person["is_identified"] is True

    create_person(clean_db, 2, ["anonymous_id_2"])
    await manager.process_batch([identify("new_distinct_id", "anonymous_id_2")])
    [person] = persons(clean_db)
    assert person["distinct_ids"] == ["anonymous_id", "new_distinct_id", "anonymous_id_2"]
    assert person["is_identified"] is True


async def test_identify_with_same_distinct_id_as_anon_id(
    manager: PersonManager, clean_db: SyncConnection
) -> None:
    create_person(clean_db, 2, ["anonymous_id"])
    await manager.process_batch([identify("anonymous_id", "anonymous_id")])
    [person] = persons(clean_db)
    assert person["distinct_ids"] == ["anonymous_id"]
    assert person["is_identified"] is False


async def test_identify_without_anon_id_does_not_identify(
    manager: PersonManager, clean_db: SyncConnection
) -> None:
    await manager.process_batch([event("someone", "$identify", {"$set": {"a": 1}})])
    [person] = persons(clean_db)
    assert (person["is_identified"], person["properties"]) == (False, {"a": 1})


async def test_distinct_id_team_leakage(manager: PersonManager, clean_db: SyncConnection) -> None:
    team2 = create_organization_and_team(clean_db, team_name="second").team_id
    create_person(clean_db, team2, ["2"], {"email": "team2@gmail.com"})
    create_person(clean_db, 2, ["1", "2"])
    await manager.process_batch([identify("2", "1"), event("2", properties={"$set": {"team": 2}})])
    ours, theirs = persons(clean_db)[1], persons(clean_db)[0]
    assert (ours["team_id"], ours["distinct_ids"], ours["properties"]) == (2, ["1", "2"], {"team": 2})
    assert (theirs["team_id"], theirs["distinct_ids"], theirs["properties"]) == (
        team2,
        ["2"],
        {"email": "team2@gmail.com"},
    )


@pytest.mark.parametrize(
    ("anonymous_event", "first_person_ids"),
    [
        pytest.param(True, ["anonymous_id", "initial_distinct_id"], id="after-an-anonymous-event"),
        pytest.param(False, ["initial_distinct_id", "anonymous_id"], id="without-anonymous-event"),
    ],
)
async def test_identified_users_are_not_aliased_again(
    manager: PersonManager, clean_db: SyncConnection, anonymous_event: bool, first_person_ids: list[str]
) -> None:
    """posthog/posthog#5527: after login, switching distinct ids must not merge identified persons."""
    client = Client(manager)
    if anonymous_event:
        await client.capture("event 1")
    await client.identify("initial_distinct_id")
    await client.capture("event 2")
    client.current = "p2_distinct_id"
    await client.capture("event 3")
    await client.identify("new_distinct_id")
    await client.capture("event 4")
    await client.identify("initial_distinct_id")
    assert identities(clean_db) == [
        (first_person_ids, True),
        (["p2_distinct_id", "new_distinct_id"], True),
    ]


async def test_create_alias_identified_to_identified(
    manager: PersonManager, clean_db: SyncConnection
) -> None:
    client = Client(manager)
    await client.identify("identified_id1")
    await client.capture("some event")
    await client.identify("identified_id2")
    await client.alias("identified_id1")
    assert [(sorted(p["distinct_ids"]), p["is_identified"]) for p in persons(clean_db)] == [
        (["anonymous_id", "identified_id1", "identified_id2"], True)
    ]


@pytest.mark.parametrize(
    ("alias", "current"), [("anonymous_id", "initial_distinct_id"), ("initial_distinct_id", "anonymous_id")]
)
async def test_create_alias_anonymous_and_identified(
    manager: PersonManager, clean_db: SyncConnection, alias: str, current: str
) -> None:
    client = Client(manager)
    await client.identify("initial_distinct_id")
    client.current = "anonymous_id"
    await client.capture("anonymous event")
    client.current = current
    await client.alias(alias)
    assert identities(clean_db) == [(["initial_distinct_id", "anonymous_id"], True)]


async def test_create_alias_anonymous_to_anonymous(manager: PersonManager, clean_db: SyncConnection) -> None:
    client = Client(manager)
    client.current = "anonymous-1"
    await client.capture("anonymous event 1")
    client.current = "anonymous-2"
    await client.capture("anonymous event 2")
    await client.alias("anonymous-1")
    assert identities(clean_db) == [(["anonymous-1", "anonymous-2"], False)]


async def test_create_alias_two_new_ids(manager: PersonManager, clean_db: SyncConnection) -> None:
    client = Client(manager)
    client.current = "anonymous-1"
    await client.alias("anonymous-2")
    assert identities(clean_db) == [(["anonymous-1", "anonymous-2"], False)]


async def test_identify_flow_within_one_batch(manager: PersonManager, clean_db: SyncConnection) -> None:
    """Anonymous events, $identify and events of the identified user in one batch, as the original
    would process them one by one."""
    await manager.process_batch(
        [
            event("anon", "$pageview", {"$set_once": {"$initial_os": "Mac"}}),
            event("anon", "$pageview", {"$set": {"plan": "free"}}),
            identify("user", "anon", **{"$set": {"email": "u@example.com"}}),
            event("user", "upgrade", {"$set": {"plan": "pro"}}),
            event("anon", "$pageview", {"$set_once": {"plan": "ignored"}}),
            event("other", "$pageview"),
        ]
    )
    assert [(p["distinct_ids"], p["properties"], p["is_identified"]) for p in persons(clean_db)] == [
        (["anon", "user"], {"$initial_os": "Mac", "plan": "pro", "email": "u@example.com"}, True),
        (["other"], {}, False),
    ]


async def test_merge_within_batch_keeps_pending_properties(
    manager: PersonManager, clean_db: SyncConnection
) -> None:
    create_person(clean_db, 2, ["a"], {"x": 0})
    create_person(clean_db, 2, ["b"], {"y": 0})
    await manager.process_batch(
        [
            event("a", properties={"$set": {"x": 1, "both": "a"}}),
            event("b", properties={"$set": {"y": 1, "both": "b"}}),
            create_alias("b", "a"),
            event("a", properties={"$set": {"z": 1}}),
        ]
    )
    [person] = persons(clean_db)
    assert person["distinct_ids"] == ["a", "b"]
    assert person["properties"] == {"x": 1, "y": 1, "both": "b", "z": 1}


async def test_set_that_changes_nothing_does_not_outlive_a_merge(
    manager: PersonManager, clean_db: SyncConnection
) -> None:
    create_person(clean_db, 2, ["p"], {"k": "p"})
    create_person(clean_db, 2, ["q"], {"k": "q"})
    await manager.process_batch([event("p", properties={"$set": {"k": "p"}}), create_alias("q", "p")])
    assert [p["properties"] for p in persons(clean_db)] == [{"k": "q"}]


async def test_alias_of_an_id_seen_recently_sees_earlier_changes_of_its_person(
    manager: PersonManager, clean_db: SyncConnection
) -> None:
    """ "anon" is in the LRU, so the batch does not load it, yet its person has pending changes made
    through its other id: they must be written before the merge, where the target's values win."""
    create_person(clean_db, 2, ["anon", "anon2"])
    create_person(clean_db, 2, ["other"], {"k": "other"})
    await manager.process_batch([event("anon"), event("other")])
    await manager.process_batch(
        [event("anon2", properties={"$set": {"k": "anon", "j": 1}}), create_alias("other", "anon")]
    )
    [person] = persons(clean_db)
    assert person["properties"] == {"k": "other", "j": 1}


# --------------------------------------------------------------------------------------- LRU, hooks


async def test_lru_skips_the_lookup_of_recently_seen_ids(
    pool: AsyncConnectionPool[Any], clean_db: SyncConnection, team: CreatedTeam
) -> None:
    """As in the original, an id in the LRU is not looked up again, so a person deleted behind the
    server's back is not recreated by events that set nothing; without the LRU it is."""
    cached, uncached = PersonManager(pool, lru_size=100), PersonManager(pool, lru_size=0)
    await cached.process_batch([event("a")])
    clear_persons(clean_db)
    await cached.process_batch([event("a")])
    assert persons(clean_db) == []
    await cached.process_batch([event("a", properties={"$set": {"k": 1}})])  # needs the person: looked up
    assert [p["properties"] for p in persons(clean_db)] == [{"k": 1}]
    clear_persons(clean_db)
    await uncached.process_batch([event("a")])
    assert len(persons(clean_db)) == 1


async def test_changes_are_reported(
    pool: AsyncConnectionPool[Any], clean_db: SyncConnection, team: CreatedTeam
) -> None:
    manager = PersonManager(pool, lru_size=10)
    changes = await manager.process_batch([event("a", properties={"$set": {"k": 1}}), event("b")])
    created = [c for c in changes.rows if isinstance(c, PersonRow)]
    assert sorted((p.properties == {"k": 1}, p.is_deleted) for p in created) == [
        (False, False),
        (True, False),
    ]
    assert {c.distinct_id for c in changes.rows if isinstance(c, DistinctIdRow)} == {"a", "b"}
    by_id = {c.distinct_id: c.person_uuid for c in changes.rows if isinstance(c, DistinctIdRow)}

    assert {c.version for c in changes.rows} == {0}

    changes = await manager.process_batch([create_alias("a", "b")])
    rows = [c for c in changes.rows if isinstance(c, PersonRow)]
    assert [(r.uuid, r.is_deleted, r.version) for r in rows] == [
        (by_id["a"], False, 1),
        (by_id["b"], True, 0),
    ]
    assert rows[0].properties == {"k": 1}
    moves = [
        (c.distinct_id, c.person_uuid, c.is_deleted, c.version)
        for c in changes.rows
        if isinstance(c, DistinctIdRow)
    ]
    assert moves == [("b", by_id["a"], False, 1), ("b", by_id["b"], True, 0)]
    versions = clean_db.execute(
        "SELECT d.distinct_id, d.version, p.version FROM posthog_persondistinctid d "
        "JOIN posthog_person p ON p.id = d.person_id ORDER BY d.distinct_id"
    ).fetchall()
    assert versions == [("a", 0, 1), ("b", 1, 1)]

    changes = await manager.process_batch([event("b", properties={"$set": {"k": 2}})])
    assert [(c.uuid, c.properties, c.version) for c in changes.rows if isinstance(c, PersonRow)] == [
        (by_id["a"], {"k": 2}, 2)
    ]


# ------------------------------------------------------------------------------------------- races


@pytest.fixture
async def other_pool(database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    pool = await open_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


def assert_consistent(db: SyncConnection) -> None:
    """No person without distinct ids."""
    assert all(p["distinct_ids"] for p in persons(db))


Servers = Callable[[int], tuple[PersonManager, PersonManager]]


@pytest.fixture
def servers(
    pool: AsyncConnectionPool[Any], other_pool: AsyncConnectionPool[Any], team: CreatedTeam
) -> Servers:
    """`servers(lru_size)`: the person managers of two servers, each with its own pool, for team 2."""

    def make(lru_size: int) -> tuple[PersonManager, PersonManager]:
        return PersonManager(pool, lru_size=lru_size), PersonManager(other_pool, lru_size=lru_size)

    return make


async def at_once(
    managers: tuple[PersonManager, PersonManager], batch_1: list[PersonUpdate], batch_2: list[PersonUpdate]
) -> None:
    """The first server processes batch_1 while the second processes batch_2."""
    first, second = managers
    await asyncio.gather(first.process_batch(batch_1), second.process_batch(batch_2))


async def test_concurrent_creation_of_the_same_new_ids(servers: Servers, clean_db: SyncConnection) -> None:
    ids = [f"user-{i}" for i in range(50)]
    for round_ in range(5):
        batch_1 = [event(d, properties={"$set": {"one": round_}, "$set_once": {"first": 1}}) for d in ids]
        batch_2 = [
            event(d, properties={"$set": {"two": round_}, "$set_once": {"first": 2}}) for d in reversed(ids)
        ]
        await at_once(servers(0), batch_1, batch_2)
        found = persons(clean_db)
        assert sorted(d for p in found for d in p["distinct_ids"]) == sorted(ids)
        assert len(found) == len(ids)
        for person in found:
            assert person["properties"]["one"] == person["properties"]["two"] == round_
            assert person["properties"]["first"] in (1, 2)
        clear_persons(clean_db)


async def test_concurrent_merges_of_a_chain(servers: Servers, clean_db: SyncConnection) -> None:
    """Two servers merge a->b and b->c at the same time: one person with all ids and properties."""
    for _ in range(10):
        create_person(clean_db, 2, ["a"], {"a": 1}, created_at=datetime(2020, 1, 1, tzinfo=UTC))
        create_person(clean_db, 2, ["b"], {"b": 1})
        create_person(clean_db, 2, ["c"], {"c": 1})
        first, second = managers = servers(0)
        await at_once(
            managers,
            [create_alias("b", "a"), event("a", properties={"$set": {"x": 1}})],
            [create_alias("c", "b"), event("b", properties={"$set": {"y": 1}})],
        )
        [person] = persons(clean_db)
        assert sorted(person["distinct_ids"]) == ["a", "b", "c"]
        assert person["properties"] == {"a": 1, "b": 1, "c": 1, "x": 1, "y": 1}
        assert person["created_at"] == datetime(2020, 1, 1, tzinfo=UTC)
        assert first.alias_failures == second.alias_failures == 0
        clear_persons(clean_db)


async def test_concurrent_identify_of_the_same_anonymous_id(
    servers: Servers, clean_db: SyncConnection
) -> None:
    """Two users claim one anonymous id at once: it ends with one of them; both stay identified."""
    for _ in range(10):
        await at_once(
            servers(0), [event("anon"), identify("user1", "anon")], [event("anon"), identify("user2", "anon")]
        )
        assert_consistent(clean_db)
        found = persons(clean_db)
        assert sorted(d for p in found for d in p["distinct_ids"]) == ["anon", "user1", "user2"]
        assert all(p["is_identified"] for p in found)
        clear_persons(clean_db)


@pytest.mark.parametrize("seed", range(4))
async def test_concurrent_random_batches_keep_persons_consistent(
    servers: Servers, clean_db: SyncConnection, seed: int
) -> None:
    """Two servers ingest interleaved events of the same users, with aliases: every distinct id that
    an event named has a person, no person is left without distinct ids, and no conflict gets out."""
    rng = random.Random(seed)
    managers = servers(10)
    for _ in range(5):
        await at_once(managers, random_events(rng, 60), random_events(rng, 60))
    assert_consistent(clean_db)
    named = {d for p in persons(clean_db) for d in p["distinct_ids"]}
    assert {"a", "b", "c", "d", "e", "f"} <= named


# The races below are made deterministic by serving the first lookups from a stale view of the database,
# as when another server changed it between this server's read and its write.

Rows = dict[tuple[int, str], PersonRow]


def on_lookups(monkeypatch: pytest.MonkeyPatch, answer: Callable[[int, Rows], Rows]) -> None:
    """Person lookup number n (1 is the batch's prefetch, then come the alias's) answers `answer(n, rows)`."""
    real = persons_module._fetch_persons
    calls = 0

    async def fetch(conn: Any, keys: Any) -> Rows:
        nonlocal calls
        rows = await real(conn, keys)
        calls += 1
        return answer(calls, rows)

    monkeypatch.setattr(persons_module, "_fetch_persons", fetch)


def stale_lookups(monkeypatch: pytest.MonkeyPatch, stale: set[int], change: Callable[[Rows], Rows]) -> None:
    """Lookups number `stale` answer `change(rows)`."""
    on_lookups(monkeypatch, lambda call, rows: change(rows) if call in stale else rows)


def without(distinct_id: str) -> Callable[[Rows], Rows]:
    return lambda rows: {key: row for key, row in rows.items() if key[1] != distinct_id}


def replaced(distinct_id: str, **fields: Any) -> Callable[[Rows], Rows]:
    def change(rows: Rows) -> Rows:
        return {key: replace(row, **fields) if key[1] == distinct_id else row for key, row in rows.items()}

    return change


async def test_alias_retries_when_the_new_id_was_taken_meanwhile(
    manager: PersonManager, clean_db: SyncConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_person(clean_db, 2, ["anon"], {"a": 1})
    create_person(clean_db, 2, ["user"], {"u": 1})
    stale_lookups(monkeypatch, {2}, without("user"))  # adding "user" to anon's person hits a unique violation
    await manager.process_batch([identify("user", "anon")])
    [person] = persons(clean_db)
    assert (person["distinct_ids"], person["properties"], person["is_identified"]) == (
        ["anon", "user"],
        {"a": 1, "u": 1},
        True,
    )


async def test_merge_retries_when_a_person_was_merged_away_meanwhile(
    manager: PersonManager, clean_db: SyncConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_person(clean_db, 2, ["old"], {"o": 1})
    create_person(clean_db, 2, ["new"], {"n": 1})
    stale_lookups(monkeypatch, {2, 3}, replaced("old", id=10**9))  # a person that is gone
    await manager.process_batch([create_alias("new", "old")])
    [person] = persons(clean_db)
    assert (person["distinct_ids"], person["properties"]) == (["old", "new"], {"o": 1, "n": 1})
    assert manager.alias_failures == 0


async def test_merge_gives_up_after_three_conflicts(
    manager: PersonManager, clean_db: SyncConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_person(clean_db, 2, ["old"])
    create_person(clean_db, 2, ["new"])
    stale_lookups(monkeypatch, {2, 3, 4}, replaced("old", id=10**9))
    await manager.process_batch([create_alias("new", "old"), event("new", properties={"$set": {"k": 1}})])
    assert [(p["distinct_ids"], p["properties"]) for p in persons(clean_db)] == [
        (["old"], {}),
        (["new"], {"k": 1}),
    ]
    assert manager.alias_failures == 1


async def test_merge_of_a_person_without_distinct_ids_left_is_retried(
    manager: PersonManager, clean_db: SyncConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = create_person(clean_db, 2, [])
    create_person(clean_db, 2, ["old"], {"o": 1})
    create_person(clean_db, 2, ["new"])
    stale_lookups(monkeypatch, {2}, replaced("old", id=bare))
    await manager.process_batch([create_alias("new", "old")])
    assert [p["distinct_ids"] for p in persons(clean_db) if p["id"] != bare] == [["old", "new"]]


async def test_identify_refuses_a_person_identified_meanwhile(
    manager: PersonManager, clean_db: SyncConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_person(clean_db, 2, ["anon"], is_identified=True)
    create_person(clean_db, 2, ["user"])
    stale_lookups(monkeypatch, {2}, replaced("anon", is_identified=False))
    await manager.process_batch([identify("user", "anon")])
    assert identities(clean_db) == [
        (["anon"], True),
        (["user"], True),
    ]


async def test_new_person_whose_winner_vanished_is_created_again(
    manager: PersonManager, clean_db: SyncConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_person(clean_db, 2, ["taken"], {"w": 1})
    # The batch thinks "taken" is new, and when its insert conflicts the winner seems gone at first.
    stale_lookups(monkeypatch, {1, 2}, without("taken"))
    await manager.process_batch([event("taken", properties={"$set": {"k": 1}})])
    [person] = persons(clean_db)
    assert (person["distinct_ids"], person["properties"]) == (["taken"], {"w": 1, "k": 1})


async def test_property_changes_of_a_deleted_person_are_dropped(
    manager: PersonManager,
    clean_db: SyncConnection,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The person was deleted (say, in the app) between the prefetch and the write."""
    person_id = create_person(clean_db, 2, ["renamed"])
    ghost = PersonRow(person_id, uuidt(), 2, NOW, {}, False)
    stale_lookups(monkeypatch, {1}, lambda rows: {(2, "gone"): ghost})
    await manager.process_batch([event("gone", properties={"$set": {"k": 1}})])
    assert [(p["distinct_ids"], p["properties"]) for p in persons(clean_db)] == [(["renamed"], {})]
    assert "dropped the property changes of 1 persons" in caplog.text


async def test_pending_changes_survive_a_merge_made_elsewhere_after_the_prefetch(
    manager: PersonManager, clean_db: SyncConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after this batch loads its persons, another server merges "prev"'s person into "z"'s. The
    alias then merges z's person, which has changes pending here: they are not lost."""
    x = create_person(clean_db, 2, ["prev"])
    o = create_person(clean_db, 2, ["z"], {"o": 1})
    create_person(clean_db, 2, ["new"], {"n": 1})

    def merged_elsewhere_after_the_prefetch(call: int, rows: Rows) -> Rows:
        if call == 1:
            clean_db.execute(
                "UPDATE posthog_persondistinctid SET person_id = %s WHERE person_id = %s", (o, x)
            )
            clean_db.execute("DELETE FROM posthog_person WHERE id = %s", (x,))
        return rows

    on_lookups(monkeypatch, merged_elsewhere_after_the_prefetch)
    await manager.process_batch(
        [event("z", properties={"$set": {"j": 1}}), event("prev"), create_alias("new", "prev")]
    )
    [person] = persons(clean_db)
    assert sorted(person["distinct_ids"]) == ["new", "prev", "z"]
    assert person["properties"] == {"o": 1, "n": 1, "j": 1}


# ------------------------------------------------------------------------------------------- speed


async def measure(
    manager: PersonManager, updates: list[PersonUpdate], queries: list[str]
) -> tuple[int, float]:
    queries.clear()
    started = time.perf_counter()
    await manager.process_batch(updates)
    return len(queries), (time.perf_counter() - started) * 1000


async def test_speed_of_a_batch_of_500_events(
    team: CreatedTeam,
    pool: AsyncConnectionPool[Any],
    clean_db: SyncConnection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """500 events over 100 persons, ~3 $set properties each: a couple of round trips, not one per event.
    Run with -s to see the numbers."""
    manager = PersonManager(pool, lru_size=10_000)  # its queries alone (no check of what it hands on)
    rng = random.Random(1)

    def batch(prefix: str, version: int, extra: list[PersonUpdate] | None = None) -> list[PersonUpdate]:
        updates = [
            event(
                f"{prefix}-{rng.randrange(100)}",
                "$pageview",
                {"$set": {"plan": "pro", "v": version, "n": i % 7}},
            )
            for i in range(500)
        ]
        for update in extra or []:
            updates.insert(rng.randrange(len(updates)), update)
        return updates

    for i in range(100):
        create_person(clean_db, 2, [f"known-{i}"], {"plan": "free"})
    queries = count_queries(monkeypatch)
    results = {
        "known persons, properties change": [
            await measure(manager, batch("known", v), queries) for v in range(5)
        ],
        "known persons, nothing changes": [
            await measure(
                manager,
                [event(f"known-{i % 100}", "x", {"$set": {"plan": "pro", "v": 4}}) for i in range(500)],
                queries,
            )
            for _ in range(5)
        ],
        "100 new persons": [await measure(manager, batch(f"new{v}", 0), queries) for v in range(5)],
        "no $set, ids in the LRU": [
            await measure(manager, [event(f"known-{i % 100}") for i in range(500)], queries) for _ in range(5)
        ],
        "known persons + 10 $identify of new users": [
            await measure(
                manager,
                batch("known", 10 + v, [identify(f"user{v}-{i}", f"known-{i}") for i in range(10)]),
                queries,
            )
            for v in range(5)
        ],
    }
    print()
    for name, runs in results.items():
        print(f"{name:45} {runs[-1][0]:3} queries   best {min(ms for _, ms in runs):6.1f} ms")
    assert [runs[-1][0] for runs in results.values()][:4] == [2, 1, 2, 0]
    assert person_of(clean_db, "known-1")["properties"]["v"] == 14
    assert person_of(clean_db, "user4-3")["distinct_ids"] == ["known-3", *(f"user{v}-3" for v in range(5))]


def count_queries(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    queries: list[str] = []
    original: Callable[..., Any] = psycopg.AsyncCursor.execute

    async def counting(self: psycopg.AsyncCursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        queries.append(str(query))
        return await original(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", counting)
    return queries


async def writers_waiting(conn: psycopg.AsyncConnection[Any], count: int) -> None:
    """Wait until `count` other sessions wait for a lock (the person-property writes: nothing else runs)."""
    for _ in range(500):
        cursor = await conn.execute(
            "SELECT COUNT(*) FROM pg_stat_activity"
            " WHERE cardinality(pg_blocking_pids(pid)) > 0 AND datname = current_database()"
        )
        row = await cursor.fetchone()
        if row is not None and row[0] >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} property writes did not come to wait for the person's row")


async def test_set_once_keeps_what_another_server_wrote_between_read_and_write(
    servers: Servers, clean_db: SyncConnection, database_url: str
) -> None:
    """Two servers read the person (no `plan` yet), then write their `$set_once` of `plan` one after the
    other: a third connection holds the person's row until both wait for it, so both reads come before
    either write. The first write wins and neither loses the other's `$set`, because the change is
    written as the expression `(set_once || properties) || set` over the row as it is at the write, not
    as the properties each server computed from its read."""
    person_id = create_person(clean_db, 2, ["u"], {"kept": 1})
    first, second = servers(0)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as holder:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM posthog_person WHERE id = %s FOR UPDATE", (person_id,))
            one = asyncio.create_task(
                first.process_batch([event("u", properties={"$set_once": {"plan": "one"}, "$set": {"a": 1}})])
            )
            await writers_waiting(holder, 1)
            two = asyncio.create_task(
                second.process_batch(
                    [event("u", properties={"$set_once": {"plan": "two"}, "$set": {"b": 2}})]
                )
            )
            await writers_waiting(holder, 2)
        await asyncio.gather(one, two)
    assert person_of(clean_db, "u")["properties"] == {"kept": 1, "plan": "one", "a": 1, "b": 2}
