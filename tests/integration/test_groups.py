"""Group types on the real database: batched resolution, next free index, races, the limit of five."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from plugin_server.db.teams import CreatedTeam, create_organization_and_team
from plugin_server.ingestion.groups import (
    GroupTypeManager,
    add_group_properties,
    group_pairs,
    groupidentify_pair,
)
from tests.conftest import Counted, FakeClock

Db = psycopg.Connection[Any]


def insert_group_type(connection: Db, team_id: int, group_type: str, index: int) -> None:
    """Another writer's insert."""
    connection.execute(
        "INSERT INTO posthog_grouptypemapping (team_id, group_type, group_type_index) VALUES (%s, %s, %s)",
        (team_id, group_type, index),
    )


def stored_group_types(connection: Db, team_id: int) -> dict[str, int]:
    rows = connection.execute(
        "SELECT group_type, group_type_index FROM posthog_grouptypemapping WHERE team_id = %s", (team_id,)
    ).fetchall()
    return dict(rows)


# ---------------------------------------------------------------- pure helpers


def test_group_pairs_reads_groups_as_text() -> None:
    assert group_pairs({"foo": "bar"}) == []
    assert group_pairs({"$groups": ["organization", "PostHog"]}) == []
    assert group_pairs({"$groups": "organization"}) == []
    properties = {
        "$groups": {"organization": "PostHog", "project": 42, "float": 3.0, "flag": True, "none": None}
    }
    assert group_pairs(properties) == [
        ("organization", "PostHog"),
        ("project", "42"),
        ("float", "3"),
        ("flag", "true"),
    ]
    assert group_pairs({"$groups": {1: {"id": 1}, "list": [1, "a"], "half": 0.5}}) == [
        ("1", '{"id":1}'),
        ("list", '[1,"a"]'),
        ("half", "0.5"),
    ]


def test_groupidentify_pair_needs_the_event_and_a_truthy_type_and_key() -> None:
    identify = {"$group_type": "organization", "$group_key": "PostHog", "$group_set": {"a": 1}}
    assert groupidentify_pair("$groupidentify", identify) == ("organization", "PostHog")
    assert groupidentify_pair("$pageview", identify) is None
    assert groupidentify_pair("$groupidentify", {"$group_type": "organization"}) is None
    assert groupidentify_pair("$groupidentify", {"$group_type": "", "$group_key": "k"}) is None
    assert groupidentify_pair("$groupidentify", {"$group_type": "t", "$group_key": 0}) is None
    assert groupidentify_pair("$groupidentify", {"$group_type": "t", "$group_key": None}) is None
    assert groupidentify_pair("$groupidentify", {"$group_type": "t", "$group_key": 7}) == ("t", "7")
    assert groupidentify_pair("$groupidentify", {"$group_type": "t", "$group_key": "0"}) == ("t", "0")


def test_add_group_properties_sets_the_indexed_keys() -> None:
    indexes = {(2, "organization"): 0, (2, "project"): 1, (2, "foobar"): None}
    untouched = {"foo": "bar"}
    add_group_properties(untouched, 2, indexes)
    assert untouched == {"foo": "bar"}

    groups = {"organization": "PostHog", "project": "web", "foobar": "afsafa"}
    properties: dict[str, Any] = {"foo": "bar", "$groups": dict(groups)}
    add_group_properties(properties, 2, indexes)
    assert properties == {"foo": "bar", "$groups": groups, "$group_0": "PostHog", "$group_1": "web"}

    other_team: dict[str, Any] = {"$groups": dict(groups)}
    add_group_properties(other_team, 3, indexes)
    assert other_team == {"$groups": groups}


# ---------------------------------------------------------------- resolve on Postgres


async def test_group_types_are_fetched_and_cached_for_the_ttl(
    counted: Counted, team: CreatedTeam, clean_db: Db
) -> None:
    pool, statements = counted
    clock = FakeClock()
    manager = GroupTypeManager(pool, ttl=30, clock=clock)
    insert_group_type(clean_db, 2, "foo", 0)
    insert_group_type(clean_db, 2, "bar", 1)

    assert await manager.resolve([(2, "foo"), (2, "bar"), (2, "foo")]) == {(2, "foo"): 0, (2, "bar"): 1}
    assert len(statements) == 1

    clean_db.execute("UPDATE posthog_grouptypemapping SET group_type_index = 3 WHERE group_type = 'foo'")
    clock.now += 29
    assert await manager.resolve([(2, "foo")]) == {(2, "foo"): 0}
    assert len(statements) == 1

    clock.now += 1
    assert await manager.resolve([(2, "foo")]) == {(2, "foo"): 3}
    assert len(statements) == 2
    assert await manager.resolve([]) == {}
    assert len(statements) == 2


async def test_unknown_types_are_inserted_at_the_next_index_and_reset_the_cache(
    counted: Counted, team: CreatedTeam, clean_db: Db
) -> None:
    pool, statements = counted
    manager = GroupTypeManager(pool)
    insert_group_type(clean_db, 2, "foo", 0)

    assert await manager.resolve([(2, "second")]) == {(2, "second"): 1}
    assert len(statements) == 2  # load + insert

    statements.clear()
    assert await manager.resolve([(2, "third")]) == {(2, "third"): 2}
    assert len(statements) == 2  # the insert dropped the cache: load again + insert

    statements.clear()
    assert await manager.resolve([(2, "foo"), (2, "second"), (2, "third")]) == {
        (2, "foo"): 0,
        (2, "second"): 1,
        (2, "third"): 2,
    }
    assert await manager.resolve([(2, "second"), (2, "third")]) == {(2, "second"): 1, (2, "third"): 2}
    assert len(statements) == 1
    assert stored_group_types(clean_db, 2) == {"foo": 0, "second": 1, "third": 2}


async def test_a_batch_of_new_types_for_many_teams_takes_one_insert_in_the_given_order(
    counted: Counted, team: CreatedTeam, clean_db: Db
) -> None:
    pool, statements = counted
    other = create_organization_and_team(clean_db).team_id
    insert_group_type(clean_db, other, "company", 0)
    manager = GroupTypeManager(pool)

    resolved = await manager.resolve(
        [(2, "zeta"), (other, "project"), (2, "alpha"), (other, "company"), (2, "zeta")]
    )
    assert resolved == {(2, "zeta"): 0, (2, "alpha"): 1, (other, "project"): 1, (other, "company"): 0}
    assert [statement.split()[0] for statement in statements] == ["SELECT", "WITH"]


async def test_a_type_inserted_at_our_index_by_another_writer_moves_us_to_the_next(
    counted: Counted, team: CreatedTeam, clean_db: Db
) -> None:
    pool, statements = counted
    manager = GroupTypeManager(pool)
    assert await manager.resolve([(2, "first")]) == {(2, "first"): 0}
    assert await manager.resolve([(2, "first")]) == {(2, "first"): 0}  # cached: {first: 0}

    insert_group_type(clean_db, 2, "foo", 1)  # another worker
    statements.clear()
    assert await manager.resolve([(2, "second")]) == {(2, "second"): 2}
    assert [statement.split()[0] for statement in statements] == ["WITH", "SELECT", "WITH"]
    assert stored_group_types(clean_db, 2) == {"first": 0, "foo": 1, "second": 2}


async def test_a_type_created_by_another_writer_is_found_without_a_second_insert(
    counted: Counted, team: CreatedTeam, clean_db: Db
) -> None:
    pool, statements = counted
    manager = GroupTypeManager(pool)
    assert await manager.resolve([(2, "first")]) == {(2, "first"): 0}
    assert await manager.resolve([(2, "first")]) == {(2, "first"): 0}

    insert_group_type(clean_db, 2, "foo", 1)
    insert_group_type(clean_db, 2, "bar", 2)
    statements.clear()
    assert await manager.resolve([(2, "bar"), (2, "new")]) == {(2, "bar"): 2, (2, "new"): 3}
    assert stored_group_types(clean_db, 2) == {"first": 0, "foo": 1, "bar": 2, "new": 3}


async def test_two_managers_racing_agree_on_every_index(
    counted: Counted, team: CreatedTeam, clean_db: Db
) -> None:
    pool, _ = counted
    teams = [2, *(create_organization_and_team(clean_db).team_id for _ in range(3))]
    for _ in range(10):
        clean_db.execute("DELETE FROM posthog_grouptypemapping")
        first, second = GroupTypeManager(pool), GroupTypeManager(pool)
        left = [(team_id, group_type) for team_id in teams for group_type in ("a", "b", "c")]
        right = [(team_id, group_type) for team_id in reversed(teams) for group_type in ("c", "d", "e", "f")]
        one, two = await asyncio.gather(first.resolve(left), second.resolve(right))
        for team_id in teams:
            stored = stored_group_types(clean_db, team_id)
            assert sorted(stored.values()) == [0, 1, 2, 3, 4]
            assert set(stored) < {"a", "b", "c", "d", "e", "f"}
            for answer in (one, two):
                for (answered_team, group_type), index in answer.items():
                    if answered_team == team_id:
                        assert index == stored.get(group_type)
            assert one[(team_id, "c")] == two[(team_id, "c")] is not None


async def test_no_more_than_five_types_per_team(counted: Counted, team: CreatedTeam, clean_db: Db) -> None:
    pool, statements = counted
    for index in range(5):
        insert_group_type(clean_db, 2, f"g{index}", index)
    manager = GroupTypeManager(pool)

    assert await manager.resolve([(2, "new"), (2, "g4")]) == {(2, "new"): None, (2, "g4"): 4}
    assert len(statements) == 1  # no insert is attempted

    other = create_organization_and_team(clean_db).team_id
    resolved = await manager.resolve([(other, f"t{n}") for n in range(7)])
    assert resolved == {**{(other, f"t{n}"): n for n in range(5)}, (other, "t5"): None, (other, "t6"): None}
    assert stored_group_types(clean_db, 2) == {f"g{index}": index for index in range(5)}


async def test_types_that_cannot_be_stored_or_teams_that_do_not_exist_resolve_to_none(
    counted: Counted, team: CreatedTeam, clean_db: Db
) -> None:
    pool, _ = counted
    manager = GroupTypeManager(pool)
    resolved = await manager.resolve([(2, "x" * 401), (2, "nul\x00"), (999, "company"), (2, "company")])
    assert resolved == {(2, "x" * 401): None, (2, "nul\x00"): None, (999, "company"): None, (2, "company"): 0}
    assert clean_db.execute("SELECT team_id, group_type FROM posthog_grouptypemapping").fetchall() == [
        (2, "company")
    ]


async def test_group_properties_and_groupidentify_resolve_in_one_batch(
    counted: Counted, team: CreatedTeam
) -> None:
    pool, statements = counted
    manager = GroupTypeManager(pool)
    events: list[tuple[str, dict[str, Any]]] = [
        ("$pageview", {"$groups": {"organization": "PostHog", "project": "web"}}),
        ("$groupidentify", {"$group_type": "instance", "$group_key": "eu", "$group_set": {"a": 1}}),
        ("$pageview", {"$groups": {"project": "app", "instance": "us"}}),
    ]
    wanted = [(2, group_type) for _, properties in events for group_type, _ in group_pairs(properties)]
    wanted += [(2, pair[0]) for name, properties in events if (pair := groupidentify_pair(name, properties))]
    indexes = await manager.resolve(wanted)
    assert len(statements) == 2
    for _, properties in events:
        add_group_properties(properties, 2, indexes)
    assert indexes[(2, "instance")] == 2
    assert events[0][1] == {
        "$groups": {"organization": "PostHog", "project": "web"},
        "$group_0": "PostHog",
        "$group_1": "web",
    }
    assert "$group_2" not in events[1][1]
    assert events[2][1]["$group_1"] == "app" and events[2][1]["$group_2"] == "us"
