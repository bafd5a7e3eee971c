"""TeamManager and OrganizationManager on the real database: batching, caching, the first-event flag."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import psycopg
import pytest

from plugin_server.db.teams import CreatedTeam, create_organization_and_team
from plugin_server.ingestion.teams import Organization, OrganizationManager, TeamManager
from tests.conftest import Counted, FakeClock

Db = psycopg.Connection[Any]


async def test_team_is_fetched_and_cached_for_the_ttl(
    counted: Counted, team: CreatedTeam, clean_db: Db
) -> None:
    pool, statements = counted
    clock = FakeClock()
    manager = TeamManager(pool, ttl=30, clock=clock)

    found = (await manager.get_teams([team.team_id]))[team.team_id]
    assert found is not None
    assert (found.id, found.name, found.api_token) == (team.team_id, "TEST PROJECT", team.api_token)
    assert found.organization_id == team.organization_id
    assert uuid.UUID(found.uuid)
    assert not (found.anonymize_ips or found.ingested_event or found.session_recording_opt_in)
    assert found.slack_incoming_webhook is None

    clean_db.execute("UPDATE posthog_team SET name = 'Updated Name!'")
    clock.now += 20
    statements.clear()
    assert (await manager.get_team(team.team_id)).name == "TEST PROJECT"  # type: ignore[union-attr]
    assert statements == []

    clock.now += 11
    assert (await manager.get_team(team.team_id)).name == "Updated Name!"  # type: ignore[union-attr]
    assert len(statements) == 1


async def test_a_missing_team_is_cached_as_none(counted: Counted, team: CreatedTeam, clean_db: Db) -> None:
    pool, statements = counted
    clock = FakeClock()
    manager = TeamManager(pool, ttl=30, clock=clock)

    assert await manager.get_teams([-1, 999]) == {-1: None, 999: None}
    assert len(statements) == 1

    create_organization_and_team(clean_db, team_id=999)
    assert await manager.get_team(999) is None
    assert len(statements) == 1

    clock.now += 30
    assert (await manager.get_team(999)) is not None
    assert len(statements) == 2


async def test_all_cache_misses_of_a_batch_are_fetched_in_one_query(
    counted: Counted, team: CreatedTeam, clean_db: Db
) -> None:
    pool, statements = counted
    manager = TeamManager(pool)
    others = [create_organization_and_team(clean_db, team_name=f"team {n}").team_id for n in range(5)]

    teams = await manager.get_teams([team.team_id, *others, 12345, team.team_id])
    assert len(statements) == 1
    assert {team_id for team_id, found in teams.items() if found is not None} == {team.team_id, *others}
    assert teams[12345] is None
    assert teams[others[2]].name == "team 2"  # type: ignore[union-attr]

    newer = create_organization_and_team(clean_db, team_name="newer").team_id
    teams = await manager.get_teams([*others, newer, 777])
    assert len(statements) == 2
    assert teams[newer] is not None and teams[777] is None

    assert await manager.get_teams([]) == {}
    assert len(statements) == 2


async def test_team_ids_outside_the_integer_column_are_missing_without_a_query(
    counted: Counted, team: CreatedTeam
) -> None:
    pool, statements = counted
    manager = TeamManager(pool)
    assert await manager.get_teams([2**31, -(2**63)]) == {2**31: None, -(2**63): None}
    assert statements == []


async def test_the_cache_holds_at_most_max_teams(counted: Counted, team: CreatedTeam) -> None:
    pool, statements = counted
    manager = TeamManager(pool, max_teams=1)
    await manager.get_teams([team.team_id])
    await manager.get_teams([5])
    await manager.get_teams([team.team_id])
    assert len(statements) == 3


async def test_ingested_event_is_set_once_and_the_cache_refreshed(
    counted: Counted,
    team: CreatedTeam,
    clean_db: Db,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool, statements = counted
    manager, other_worker = TeamManager(pool), TeamManager(pool)
    fresh = await manager.get_team(team.team_id)
    stale = await other_worker.get_team(team.team_id)
    assert fresh is not None and stale is not None and not fresh.ingested_event

    statements.clear()
    with caplog.at_level(logging.INFO, logger="plugin_server.ingestion.teams"):
        await manager.mark_ingested_event(fresh)
        await other_worker.mark_ingested_event(stale)  # a worker whose cache is older: no second milestone
    assert len(statements) == 2
    teams_records = [record for record in caplog.records if record.name == "plugin_server.ingestion.teams"]
    assert [record.getMessage() for record in teams_records] == [
        f"first event ingested for team {team.team_id} ({fresh.uuid})"
    ]
    assert clean_db.execute("SELECT ingested_event FROM posthog_team").fetchone() == (True,)

    refreshed = await manager.get_team(team.team_id)
    assert refreshed is not None and refreshed.ingested_event
    await manager.mark_ingested_event(refreshed)
    assert len(statements) == 2


async def test_organization_is_fetched_and_cached_for_the_ttl(
    counted: Counted, team: CreatedTeam, clean_db: Db
) -> None:
    pool, statements = counted
    clock = FakeClock()
    manager = OrganizationManager(pool, clock=clock)
    clean_db.execute("UPDATE posthog_organization SET available_features = '{zapier,ingestion_taxonomy}'")

    assert await manager.get_organization(team.organization_id) == Organization(
        id=team.organization_id,
        name="Default Organization",
        available_features=("zapier", "ingestion_taxonomy"),
        plugins_access_level=9,
        for_internal_metrics=False,
    )
    clean_db.execute("UPDATE posthog_organization SET name = 'Updated Name!'")
    clock.now += 29
    assert (await manager.get_organization(team.organization_id)).name == "Default Organization"  # type: ignore[union-attr]
    assert len(statements) == 1

    clock.now += 1
    assert (await manager.get_organization(team.organization_id)).name == "Updated Name!"  # type: ignore[union-attr]
    assert len(statements) == 2


async def test_a_missing_organization_is_none_and_cached(counted: Counted, team: CreatedTeam) -> None:
    pool, statements = counted
    manager = OrganizationManager(pool)
    unknown = str(uuid.uuid4())
    assert await manager.get_organization(unknown) is None
    assert await manager.get_organization(unknown) is None
    assert len(statements) == 1

    assert await manager.get_organization("not-a-uuid") is None
    assert len(statements) == 1
