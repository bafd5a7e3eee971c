"""Installing plugins and running the real server on the services the suite starts, for e2e plugin tests."""

from __future__ import annotations

import contextlib
import json
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import psycopg
from celery import Celery

from plugin_server.db.teams import CreatedTeam
from plugin_server.plugins.admin import enable_plugin, install_plugin

from .server import RunningServer, celery_app, running_server, send_event, wait_for_count

Db = psycopg.Connection[Any]
COUNT_EVENTS = "SELECT COUNT(*) FROM posthog_event"


def write_plugin(folder: Path, name: str, source: str, main: str = "index.py") -> Path:
    """A plugin folder `name` whose `main` file (.py, .js or .ts) holds `source`."""
    plugin = folder / name
    plugin.mkdir()
    (plugin / "plugin.json").write_text(json.dumps({"name": name, "main": main}))
    (plugin / main).write_text(textwrap.dedent(source))
    return plugin


def install(
    db: Db, tmp_path: Path, team: CreatedTeam, name: str, source: str, config: dict[str, Any] | None = None
) -> int:
    plugin = install_plugin(db, write_plugin(tmp_path, name, source))
    return enable_plugin(db, plugin, team.team_id, config or {}).id


def env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "WORKER_CONCURRENCY": "1", **extra}


def events_by_name(db: Db) -> dict[str, dict[str, Any]]:
    return {
        name: properties for name, properties in db.execute("SELECT event, properties FROM posthog_event")
    }


def config_error(db: Db, config_id: int) -> dict[str, Any] | None:
    row = db.execute("SELECT error FROM posthog_pluginconfig WHERE id = %s", (config_id,)).fetchone()
    return row[0] if row else None


def storage(db: Db, config_id: int, key: str) -> Any:
    row = db.execute(
        "SELECT value FROM posthog_pluginstorage WHERE plugin_config_id = %s AND key = %s", (config_id, key)
    ).fetchone()
    return json.loads(row[0]) if row else None


@dataclass
class Stack:
    """One test's services: an empty database with team 2 (`db` is connected to it), Redis, a folder."""

    tmp_path: Path
    database_url: str
    redis_url: str
    team: CreatedTeam
    db: Db

    @cached_property
    def app(self) -> Celery:
        """The Celery app PostHog would send tasks with."""
        return celery_app(self.redis_url)

    def env(self, **extra: str) -> dict[str, str]:
        return env(self.database_url, self.redis_url, **extra)

    def install(self, name: str, source: str, config: dict[str, Any] | None = None) -> int:
        """Install a Python plugin `name` and enable it for the team; return the config id."""
        return install(self.db, self.tmp_path, self.team, name, source, config)

    @contextlib.contextmanager
    def server(self, **extra_env: str) -> Iterator[RunningServer]:
        """A server running in tmp_path (with `env(**extra_env)`), once it logged "All systems go"."""
        with running_server(self.tmp_path, self.env(**extra_env)) as server:
            server.wait_for_log("All systems go")
            yield server

    def send(self, event: str, *, distinct_id: str = "d", **options: Any) -> None:
        """Send an event of the team as PostHog's capture would, through Celery."""
        send_event(self.app, team_id=self.team.team_id, distinct_id=distinct_id, event=event, **options)

    def wait_for_events(self, expected: int, timeout: float = 60) -> int:
        return wait_for_count(self.database_url, COUNT_EVENTS, expected, timeout)

    def storage(self, config_id: int, key: str) -> Any:
        return storage(self.db, config_id, key)

    def config_error(self, config_id: int) -> dict[str, Any] | None:
        return config_error(self.db, config_id)

    def events_by_name(self) -> dict[str, dict[str, Any]]:
        return events_by_name(self.db)
