"""Postgres and Valkey for benchmarks: the ones in DATABASE_URL / REDIS_URL, or embedded ones."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg

from plugin_server.db.migrate import migrate
from plugin_server.db.postgres import recreate_database
from plugin_server.db.teams import create_organization_and_team
from plugin_server.plugins.admin import enable_plugin, install_plugin

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


def fresh_database(server_url: str, plugin: str | None = None) -> str:
    """An empty, migrated database with team 2 (and `plugin` from benchmarks/plugins enabled for it)."""
    url = recreate_database(server_url, BENCH_DATABASE)
    migrate(url)
    with psycopg.connect(url, autocommit=True) as connection:
        create_organization_and_team(connection, team_id=TEAM_ID)
        if plugin:
            installed = install_plugin(connection, PLUGINS / plugin)
            enable_plugin(connection, installed, TEAM_ID, {})
    return url
