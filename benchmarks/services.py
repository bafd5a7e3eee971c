"""Postgres and Valkey for benchmarks: the ones in DATABASE_URL / REDIS_URL, or embedded ones."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis.asyncio as aioredis
from tests.plugin_hosts import RunningPlugins, open_running_plugins

from plugin_server.config import load_settings
from plugin_server.db.migrate import migrate
from plugin_server.db.postgres import open_pool, recreate_database
from plugin_server.db.teams import create_organization_and_team
from plugin_server.plugins.admin import enable_plugin, install_plugin
from plugin_server.plugins.tracking import CallTracker, SharedCallState
from plugin_server.services.geoip import GeoIP

BENCH_DATABASE = "plugin_server_bench"
TEAM_ID = 2
PLUGINS = Path(__file__).parent / "plugins"


@contextlib.contextmanager
def benchmark_services() -> Iterator[tuple[str, str]]:
    """(server database URL, Redis URL), started for the benchmark unless given in the environment."""
    from plugin_server.services.embedded import start_embedded

    database_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    with tempfile.TemporaryDirectory(prefix="plugin-server-bench-") as folder:
        os.chmod(folder, 0o755)
        embedded = None
        if not (database_url and redis_url):
            embedded = start_embedded(Path(folder), postgres=not database_url, redis=not redis_url)
            database_url = database_url or embedded.database_url
            redis_url = redis_url or embedded.redis_url
        assert database_url and redis_url
        try:
            yield database_url, redis_url
        finally:
            if embedded:
                embedded.stop()


def fresh_database(server_url: str, plugin: str | None = None, name: str = BENCH_DATABASE) -> str:
    """An empty, migrated database with team 2 (and `plugin` from benchmarks/plugins enabled for it)."""
    url = recreate_database(server_url, name)
    migrate(url)
    with psycopg.connect(url, autocommit=True) as connection:
        create_organization_and_team(connection, team_id=TEAM_ID)
        if plugin:
            installed = install_plugin(connection, PLUGINS / plugin)
            enable_plugin(connection, installed, TEAM_ID, {})
    return url


@contextlib.asynccontextmanager
async def running_plugins(
    database_url: str, redis_url: str, *, geoip: GeoIP | None = None, **settings: Any
) -> AsyncIterator[RunningPlugins]:
    """A worker's plugin machinery (registry loaded, calls tracked as in a worker) in this process."""
    pool = await open_pool(database_url, max_size=8)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        async with open_running_plugins(
            load_settings({}, DATABASE_URL=database_url, REDIS_URL=redis_url, **settings),
            pool,
            redis,
            geoip=geoip,
            tracker=CallTracker(SharedCallState()),
        ) as running:
            await running.plugins.registry.reload()
            yield running
    finally:
        await redis.aclose()
        await pool.close()


def wait_for_health(url: str, exited: Callable[[], str | None] = lambda: None, timeout: float = 60) -> None:
    """Until the web process at `url` answers /_health; `exited` says why it never will (it died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (reason := exited()) is not None:
            raise RuntimeError(reason)
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/_health", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError("the web process did not answer /_health")
