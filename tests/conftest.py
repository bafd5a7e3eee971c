"""Real services for the whole suite: a Postgres and a Valkey started once per test session.

When DATABASE_URL / REDIS_URL are set, those servers are used instead (a fresh database
`plugin_server_test` is created on the given Postgres, and Redis db 15 is used). Under pytest-xdist
each worker process has its own: embedded servers of its own, or on given servers the database
`plugin_server_test_gw<N>` and Redis db 15 - N.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import redis.asyncio as aioredis
from clickhouse_connect.driver.client import Client
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings, load_settings
from plugin_server.db.migrate import migrate
from plugin_server.db.postgres import open_pool, recreate_database
from plugin_server.db.teams import CreatedTeam, create_organization_and_team
from plugin_server.services.embedded import start_embedded
from plugin_server.sinks.clickhouse.client import open_client
from plugin_server.sinks.clickhouse.migrate import open_migrated
from tests.kafka_broker import KafkaBroker

pytest_plugins = ["tests.worker_stderr"]

# pytest-xdist names its worker processes gw0, gw1, ...; without it there is one process and no name.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
TEST_DATABASE = f"plugin_server_test_{XDIST_WORKER}" if XDIST_WORKER else "plugin_server_test"
REDIS_TEST_DB = 15 - int(XDIST_WORKER.removeprefix("gw") or 0)
TEAM_ID = 2

# Tables emptied before each test that asks for a clean database, children first (and the job queue,
# whose jobs name plugin config ids that restart from 1).
TABLES = [
    "posthog_action_events",
    "posthog_actionstep",
    "posthog_action",
    "posthog_element",
    "posthog_elementgroup",
    "posthog_event",
    "posthog_sessionrecordingevent",
    "posthog_cohortpeople",
    "posthog_cohort",
    "posthog_persondistinctid",
    "posthog_person",
    "posthog_pluginlogentry",
    "posthog_pluginstorage",
    "posthog_pluginattachment",
    "posthog_pluginconfig",
    "posthog_plugin",
    "posthog_eventdefinition",
    "posthog_propertydefinition",
    "posthog_grouptypemapping",
    "posthog_featureflag",
    "posthog_annotation",
    "posthog_dashboarditem",
    "posthog_dashboard",
    "ee_hook",
    "posthog_personalapikey",
    "posthog_organizationmembership",
    "posthog_team",
    "posthog_user",
    "posthog_organization",
    "plugin_server_jobs",
    "plugin_server_schedule_periods",
    "plugin_server_person_outbox",
]


@pytest.fixture(scope="session")
def services() -> Iterator[tuple[str, str]]:
    given_db, given_redis = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    embedded = None
    with tempfile.TemporaryDirectory(prefix="plugin-server-tests-") as folder:
        os.chmod(folder, 0o755)  # the embedded Postgres runs as an unprivileged user when we are root
        if not (given_db and given_redis):
            embedded = start_embedded(Path(folder), postgres=not given_db, redis=not given_redis)
        base_db = given_db or embedded.database_url  # type: ignore[union-attr]
        redis_url = given_redis or embedded.redis_url  # type: ignore[union-attr]
        assert base_db and redis_url
        database_url = recreate_database(base_db, TEST_DATABASE)
        migrate(database_url)
        if given_redis:
            redis_url = f"{redis_url.rstrip('/')}/{REDIS_TEST_DB}"
        try:
            yield database_url, redis_url
        finally:
            if embedded:
                embedded.stop()


@pytest.fixture(scope="session")
def kafka() -> Iterator[str]:
    """A Kafka-protocol broker (tansu, in memory) for the session; its bootstrap address (KAFKA_HOSTS)."""
    with KafkaBroker() as broker:
        yield broker.bootstrap


@pytest.fixture(scope="session")
def database_url(services: tuple[str, str]) -> str:
    return services[0]


@pytest.fixture(scope="session")
def redis_url(services: tuple[str, str]) -> str:
    return services[1]


@pytest.fixture
def clean_db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An empty database with team 2 in an organization, like the original's resetTestDatabase."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        yield connection


@pytest.fixture
def team(clean_db: psycopg.Connection[Any]) -> CreatedTeam:
    return create_organization_and_team(clean_db, team_id=TEAM_ID, team_name="TEST PROJECT")


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    pool = await open_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
async def aredis(redis_client: redis.Redis, redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def wait_until(condition: Callable[[], bool], timeout: float = 5) -> None:
    """Poll `condition` on the event loop until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class FakeClock:
    """A monotonic clock the test moves by hand (`clock.now += 31`)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Counted = tuple[AsyncConnectionPool[Any], list[str]]


@pytest.fixture
async def counted(database_url: str) -> AsyncIterator[Counted]:
    """A pool that records every statement its connections run, to count round trips."""
    statements: list[str] = []

    class CountingCursor(psycopg.AsyncCursor[Any]):
        async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> CountingCursor:
            statements.append(str(query))
            return await super().execute(query, params, **kwargs)

    kwargs = {"autocommit": True, "row_factory": dict_row, "cursor_factory": CountingCursor}
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, kwargs=kwargs, min_size=2, open=False)
    await pool.open(wait=True)
    yield pool, statements
    await pool.close()


# --- ClickHouse: the in-process chDB engine behind clickhouse-connect. chDB opens one data folder per
# process, so the whole session shares one folder and each test gets a database of its own. A test that
# runs a server subprocess on the folder must hold no client of it meanwhile (closing every client
# releases the folder).


@pytest.fixture(scope="session")
def chdb_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def clickhouse_settings(request: pytest.FixtureRequest, chdb_folder: Path) -> Iterator[Settings]:
    """Settings of a fresh ClickHouse database on chDB (dropped afterwards), in the CLICKHOUSE_KAFKA_FORMAT
    a test may parametrize it with (indirect; default original)."""
    database = f"test_{uuid.uuid4().hex[:12]}"
    formats = getattr(request, "param", "original")
    yield load_settings(
        {},
        CLICKHOUSE_HOST=f"chdb://{chdb_folder}",
        CLICKHOUSE_DATABASE=database,
        CLICKHOUSE_KAFKA_FORMAT=formats,
    )
    client = open_client(load_settings({}, CLICKHOUSE_HOST=f"chdb://{chdb_folder}"))
    client.command(f"DROP DATABASE IF EXISTS {database}")
    client.close()


@pytest.fixture
def clickhouse(clickhouse_settings: Settings) -> Iterator[Client]:
    """A client of the test's ClickHouse database, migrated (the Kafka tables as Null tables)."""
    client, _ = open_migrated(clickhouse_settings)
    yield client
    client.close()
