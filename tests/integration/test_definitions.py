"""DefinitionsManager on the real database: batched inserts, is_numerical, expiring caches, races."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from plugin_server.db.teams import CreatedTeam, create_organization_and_team
from plugin_server.ingestion._event_properties import collect_names
from plugin_server.ingestion.definitions import DefinitionsManager
from plugin_server.ingestion.uuidt import uuidt
from tests.conftest import Counted, FakeClock

Db = psycopg.Connection[Any]


@pytest.fixture
def seeded(team: CreatedTeam, clean_db: Db) -> CreatedTeam:
    """The original's test fixture: $pageview, property_name (text) and numeric_prop (numerical)."""
    clean_db.execute(
        "INSERT INTO posthog_eventdefinition (id, name, volume_30_day, query_usage_30_day, team_id) "
        "VALUES (%s, '$pageview', 3, 2, %s)",
        (uuidt(), team.team_id),
    )
    for name, numerical in (("property_name", False), ("numeric_prop", True)):
        clean_db.execute(
            "INSERT INTO posthog_propertydefinition (id, name, is_numerical, team_id) "
            "VALUES (%s, %s, %s, %s)",
            (uuidt(), name, numerical, team.team_id),
        )
    return team


def event_definitions(connection: Db) -> list[tuple[Any, ...]]:
    return connection.execute(
        "SELECT team_id, name, volume_30_day, query_usage_30_day FROM posthog_eventdefinition "
        "ORDER BY team_id, name"
    ).fetchall()


def property_definitions(connection: Db) -> dict[tuple[int, str], bool]:
    rows = connection.execute("SELECT team_id, name, is_numerical FROM posthog_propertydefinition").fetchall()
    return {(team_id, name): numerical for team_id, name, numerical in rows}


async def test_unseen_event_names_and_property_keys_are_inserted(
    counted: Counted, seeded: CreatedTeam, clean_db: Db
) -> None:
    pool, _ = counted
    await DefinitionsManager(pool).record(
        [(2, "new-event", {"property_name": "efg", "number": 4, "numeric_prop": 5})]
    )
    assert event_definitions(clean_db) == [(2, "$pageview", 3, 2), (2, "new-event", None, None)]
    assert property_definitions(clean_db) == {
        (2, "property_name"): False,
        (2, "numeric_prop"): True,
        (2, "number"): True,
    }
    volumes = clean_db.execute(
        "SELECT DISTINCT volume_30_day, query_usage_30_day FROM posthog_propertydefinition"
    )
    assert volumes.fetchall() == [(None, None)]


async def test_a_batch_costs_at_most_three_queries_and_known_names_none(
    counted: Counted, seeded: CreatedTeam, clean_db: Db
) -> None:
    pool, statements = counted
    others = [create_organization_and_team(clean_db).team_id for _ in range(3)]
    manager = DefinitionsManager(pool)
    batch = [
        (team_id, f"event {n % 7}", {f"key {n % 11}": n, "shared": "x", "$lib": "web"})
        for n in range(200)
        for team_id in (seeded.team_id, *others)
    ]
    await manager.record(batch)
    assert [statement.split()[0] for statement in statements] == ["SELECT", "INSERT", "INSERT"]
    assert len(event_definitions(clean_db)) == 1 + 4 * 7
    assert len(property_definitions(clean_db)) == 2 + 4 * 13

    statements.clear()
    await manager.record(batch)
    await manager.record([(seeded.team_id, "$pageview", {"property_name": "x"})])
    assert statements == []

    await manager.record([])
    assert statements == []


async def test_a_batch_with_known_names_of_an_uncached_team_only_loads(
    counted: Counted, seeded: CreatedTeam
) -> None:
    pool, statements = counted
    await DefinitionsManager(pool).record(
        [(seeded.team_id, "$pageview", {"numeric_prop": 1, "property_name": "a"})]
    )
    assert len(statements) == 1


async def test_is_numerical_means_a_number_and_never_a_bool() -> None:
    numbers = {"int": 1, "float": 1.5, "negative zero": -0.0, "big": 10**30}
    others = {"true": True, "false": False, "text": "5", "null": None, "list": [1], "object": {"a": 1}}
    _, keys, numerical = collect_names([(1, "e", numbers | others)])[1]
    assert (keys, numerical) == (set(numbers) | set(others), set(numbers))


async def test_a_property_becomes_numerical_once_a_number_is_seen_and_stays_so(
    counted: Counted, seeded: CreatedTeam, clean_db: Db
) -> None:
    pool, statements = counted
    manager = DefinitionsManager(pool)
    team_id = seeded.team_id
    await manager.record(
        [
            (team_id, "e", {"flag": True, "price": "12", "mixed_in_batch": "a"}),
            (team_id, "e", {"mixed_in_batch": 3}),
        ]
    )
    assert property_definitions(clean_db)[(team_id, "flag")] is False
    assert property_definitions(clean_db)[(team_id, "price")] is False
    assert property_definitions(clean_db)[(team_id, "mixed_in_batch")] is True

    statements.clear()
    # property_name is a text property in the database
    await manager.record([(team_id, "e", {"price": 12.5, "property_name": 7})])
    assert len(statements) == 1
    assert property_definitions(clean_db)[(team_id, "price")] is True
    assert property_definitions(clean_db)[(team_id, "property_name")] is True

    statements.clear()
    await manager.record([(team_id, "e", {"price": "free", "numeric_prop": "n/a", "flag": False})])
    assert statements == []
    definitions = property_definitions(clean_db)
    assert (definitions[(team_id, "price")], definitions[(team_id, "numeric_prop")]) == (True, True)


async def test_an_upgrade_already_made_elsewhere_changes_nothing(
    counted: Counted, seeded: CreatedTeam, clean_db: Db
) -> None:
    pool, _ = counted
    manager = DefinitionsManager(pool)
    await manager.record([(seeded.team_id, "e", {"property_name": "x"})])
    clean_db.execute("UPDATE posthog_propertydefinition SET is_numerical = true WHERE name = 'property_name'")
    await manager.record([(seeded.team_id, "e", {"property_name": 1})])
    assert property_definitions(clean_db)[(seeded.team_id, "property_name")] is True
    assert clean_db.execute("SELECT COUNT(*) FROM posthog_propertydefinition").fetchone() == (2,)


async def test_team_caches_expire_so_changes_elsewhere_are_noticed(
    counted: Counted, seeded: CreatedTeam, clean_db: Db
) -> None:
    pool, statements = counted
    clock = FakeClock()
    manager = DefinitionsManager(pool, ttl=300, clock=clock)
    await manager.record([(seeded.team_id, "$pageview", {"property_name": "x"})])
    clean_db.execute("DELETE FROM posthog_eventdefinition")
    clean_db.execute("DELETE FROM posthog_propertydefinition WHERE name = 'property_name'")

    clock.now += 299
    statements.clear()
    await manager.record([(seeded.team_id, "$pageview", {"property_name": "x"})])
    assert statements == []
    assert event_definitions(clean_db) == []

    clock.now += 1
    await manager.record([(seeded.team_id, "$pageview", {"property_name": "x"})])
    assert len(statements) == 3
    assert [name for _, name, _, _ in event_definitions(clean_db)] == ["$pageview"]
    assert (seeded.team_id, "property_name") in property_definitions(clean_db)


async def test_at_most_max_teams_are_cached(counted: Counted, seeded: CreatedTeam, clean_db: Db) -> None:
    pool, statements = counted
    other = create_organization_and_team(clean_db).team_id
    manager = DefinitionsManager(pool, max_teams=1)
    for team_id in (seeded.team_id, other, seeded.team_id):
        await manager.record([(team_id, "$pageview", {})])
    assert [statement.split()[0] for statement in statements] == ["SELECT", "SELECT", "INSERT", "SELECT"]


async def test_two_managers_racing_insert_each_definition_once(
    counted: Counted, seeded: CreatedTeam, clean_db: Db
) -> None:
    pool, _ = counted
    other = create_organization_and_team(clean_db).team_id
    for round_ in range(5):
        names = [f"r{round_} n{n}" for n in range(300)]
        forward = [(team_id, name, {name: 1}) for name in names for team_id in (seeded.team_id, other)]
        backward = [(team_id, name, {name: "text", "extra": 1}) for team_id, name, _ in reversed(forward)]
        await asyncio.gather(
            DefinitionsManager(pool).record(forward), DefinitionsManager(pool).record(backward)
        )

    assert len(event_definitions(clean_db)) == 1 + 2 * 5 * 300
    definitions = property_definitions(clean_db)
    assert len(definitions) == 2 + 2 * (5 * 300 + 1)
    assert all(numerical for (_, name), numerical in definitions.items() if name.startswith("r"))


async def test_names_that_cannot_be_stored_are_skipped(
    counted: Counted, seeded: CreatedTeam, clean_db: Db
) -> None:
    pool, _ = counted
    await DefinitionsManager(pool).record(
        [
            (seeded.team_id, "e" * 401, {"k" * 401: 1, "nul\x00key": 1, "k" * 400: 1}),
            (seeded.team_id, "nul\x00event", {}),
        ]
    )
    assert [name for _, name, _, _ in event_definitions(clean_db)] == ["$pageview"]
    assert (seeded.team_id, "k" * 400) in property_definitions(clean_db)
    assert len(property_definitions(clean_db)) == 3


async def test_definitions_of_a_team_that_does_not_exist_are_not_written(
    counted: Counted, seeded: CreatedTeam, clean_db: Db
) -> None:
    pool, _ = counted
    await DefinitionsManager(pool).record([(999, "ghost", {"a": 1}), (seeded.team_id, "real", {"b": 1})])
    assert [(team_id, name) for team_id, name, _, _ in event_definitions(clean_db)] == [
        (seeded.team_id, "$pageview"),
        (seeded.team_id, "real"),
    ]
    assert (999, "a") not in property_definitions(clean_db)
