"""posthog_event's team key checked once per batch (sinks/team_references.py) on real Postgres: taken
only where it skips nothing else, holding the lock the per-row check held, and a missing team or a
role that may not set the parameter leaves the checks to Postgres as before."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.postgres import open_pool
from plugin_server.db.teams import CreatedTeam
from plugin_server.sinks.postgres import PostgresEventSink
from plugin_server.sinks.team_references import TeamReferences
from tests.integration.test_postgres_event_sink import stored
from tests.pipelines import prepared_event

Db = psycopg.Connection[Any]
PLAIN_ROLE = "plugin_server_plain_writer"
MISSING_TEAM = 424242


async def skipped_row_checks(pool: AsyncConnectionPool[Any], team_ids: list[int]) -> bool:
    async with (
        pool.connection() as connection,
        TeamReferences().writing_events(connection, team_ids) as skipped,
    ):
        return skipped


async def test_a_batch_of_known_teams_skips_the_row_checks_until_its_commit(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    references = TeamReferences()
    async with pool.connection() as connection:
        async with references.writing_events(connection, [team.team_id, team.team_id]) as skipped:
            role = await (await connection.execute("SHOW session_replication_role")).fetchone()
        after = await (await connection.execute("SHOW session_replication_role")).fetchone()
    assert skipped
    assert role == {"session_replication_role": "replica"}
    assert after == {"session_replication_role": "origin"}  # only until the commit


async def test_a_team_cannot_be_deleted_while_a_batch_of_its_events_is_being_written(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    references = TeamReferences()
    async with (
        pool.connection() as connection,
        references.writing_events(connection, [team.team_id]) as skipped,
    ):
        assert skipped
        with pytest.raises(psycopg.errors.LockNotAvailable):
            await asyncio.to_thread(_delete_team, clean_db, team.team_id)


def _delete_team(db: Db, team_id: int) -> None:
    with db.transaction():
        db.execute("SET LOCAL lock_timeout = '200ms'")
        db.execute("DELETE FROM posthog_team WHERE id = %s", (team_id,))


async def test_events_of_a_missing_team_are_refused_by_postgres_as_before(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db
) -> None:
    assert not await skipped_row_checks(pool, [team.team_id, MISSING_TEAM])
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        await PostgresEventSink(pool).write([prepared_event(team.team_id), prepared_event(MISSING_TEAM)])
    assert stored(clean_db) == {}


@pytest.fixture
def operator_trigger(clean_db: Db) -> Iterator[None]:
    """An operator's trigger on posthog_event counting the rows inserted."""
    clean_db.execute("CREATE TABLE IF NOT EXISTS test_inserted (n bigint)")
    clean_db.execute("TRUNCATE test_inserted")
    clean_db.execute(
        "CREATE FUNCTION test_count_insert() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO test_inserted VALUES (1); RETURN NULL; END $$"
    )
    clean_db.execute(
        "CREATE TRIGGER test_count_insert AFTER INSERT ON posthog_event "
        "FOR EACH ROW EXECUTE FUNCTION test_count_insert()"
    )
    try:
        yield
    finally:
        clean_db.execute("DROP TRIGGER test_count_insert ON posthog_event")
        clean_db.execute("DROP FUNCTION test_count_insert()")
        clean_db.execute("DROP TABLE test_inserted")


async def test_an_operators_trigger_on_the_events_still_fires(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db, operator_trigger: None
) -> None:
    assert not await skipped_row_checks(pool, [team.team_id])
    await PostgresEventSink(pool).write([prepared_event(team.team_id) for _ in range(3)])
    assert clean_db.execute("SELECT count(*) FROM test_inserted").fetchone() == (3,)


@pytest.fixture
def another_key(clean_db: Db) -> Iterator[None]:
    """A second foreign key on posthog_event: its site_url must be a known site."""
    clean_db.execute("CREATE TABLE test_sites (url varchar(200) PRIMARY KEY)")
    clean_db.execute(
        "ALTER TABLE posthog_event ADD CONSTRAINT test_known_site "
        "FOREIGN KEY (site_url) REFERENCES test_sites (url)"
    )
    try:
        yield
    finally:
        clean_db.execute("ALTER TABLE posthog_event DROP CONSTRAINT test_known_site")
        clean_db.execute("DROP TABLE test_sites")


async def test_another_foreign_key_on_the_events_is_still_checked(
    pool: AsyncConnectionPool[Any], team: CreatedTeam, clean_db: Db, another_key: None
) -> None:
    assert not await skipped_row_checks(pool, [team.team_id])
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        await PostgresEventSink(pool).write(
            [prepared_event(team.team_id, site_url="https://unknown.example")]
        )
    assert stored(clean_db) == {}


@pytest.fixture
async def plain_pool(database_url: str, clean_db: Db) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """A pool of a role that is no superuser and was granted only what the sink needs."""
    clean_db.execute(f"DROP ROLE IF EXISTS {PLAIN_ROLE}")
    clean_db.execute(f"CREATE ROLE {PLAIN_ROLE} LOGIN")
    clean_db.execute(f"GRANT SELECT, INSERT ON posthog_event, posthog_team TO {PLAIN_ROLE}")
    clean_db.execute(f"GRANT USAGE ON SEQUENCE posthog_event_id_seq TO {PLAIN_ROLE}")
    pool = await open_pool(make_conninfo(**{**conninfo_to_dict(database_url), "user": PLAIN_ROLE}))
    try:
        yield pool
    finally:
        await pool.close()
        clean_db.execute(f"DROP OWNED BY {PLAIN_ROLE}")
        clean_db.execute(f"DROP ROLE {PLAIN_ROLE}")


@pytest.mark.parametrize(
    ("grants", "skipped"),
    [
        ((), False),
        (("SET ON PARAMETER session_replication_role",), False),  # locking the teams needs UPDATE
        (("UPDATE ON posthog_team",), False),
        (("SET ON PARAMETER session_replication_role", "UPDATE ON posthog_team"), True),
    ],
)
async def test_a_role_checks_the_teams_once_per_batch_only_when_it_may_set_the_parameter_and_lock_them(
    plain_pool: AsyncConnectionPool[Any],
    team: CreatedTeam,
    clean_db: Db,
    caplog: pytest.LogCaptureFixture,
    grants: tuple[str, ...],
    skipped: bool,
) -> None:
    for grant in grants:
        clean_db.execute(f"GRANT {grant} TO {PLAIN_ROLE}")
    with caplog.at_level(logging.INFO, "plugin_server.sinks.team_references"):
        assert await skipped_row_checks(plain_pool, [team.team_id]) is skipped
    assert ("checked row by row" in caplog.text) is not skipped
    sink = PostgresEventSink(plain_pool)
    events = [prepared_event(team.team_id) for _ in range(3)]
    await sink.write(events)
    assert sorted(stored(clean_db)) == sorted(item.uuid for item in events)
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        await sink.write([prepared_event(MISSING_TEAM)])
