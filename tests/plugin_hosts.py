"""A worker's plugin machinery outside a worker (the real services and plugin parts, built as
topology.py builds them), and plugins installed from files written for the test."""

from __future__ import annotations

import contextlib
import textwrap
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings, load_settings
from plugin_server.db.teams import CreatedTeam
from plugin_server.plugins.admin import enable_plugin, install_plugin
from plugin_server.plugins.models import PluginRow
from plugin_server.plugins.services import PluginServices, WorkerPlugins
from plugin_server.plugins.tracking import CallTracker
from plugin_server.services.geoip import GeoIP
from plugin_server.topology import open_plugin_services, open_plugins


@dataclass(frozen=True)
class RunningPlugins:
    settings: Settings
    services: PluginServices
    plugins: WorkerPlugins  # its registry is empty until `registry.reload()`


@contextlib.asynccontextmanager
async def open_running_plugins(
    settings: Settings,
    pool: AsyncConnectionPool[Any],
    redis: aioredis.Redis,
    *,
    geoip: GeoIP | None = None,
    tracker: CallTracker | None = None,
) -> AsyncIterator[RunningPlugins]:
    """A worker's plugin services and parts (no GeoIP and calls not tracked unless given)."""
    async with (
        open_plugin_services(
            settings, pool, redis, geoip=geoip or GeoIP.disabled(), tracker=tracker or CallTracker(None)
        ) as services,
        open_plugins(settings, services) as plugins,
    ):
        yield RunningPlugins(settings, services, plugins)


@contextlib.asynccontextmanager
async def running_plugins(
    pool: AsyncConnectionPool[Any], aredis: aioredis.Redis, **settings: Any
) -> AsyncIterator[RunningPlugins]:
    """A worker's plugin machinery with TASK_TIMEOUT 5 (and `settings`) and no GeoIP."""
    async with open_running_plugins(load_settings({}, TASK_TIMEOUT=5, **settings), pool, aredis) as running:
        yield running


def install_files(
    db: psycopg.Connection[Any],
    tmp_path: Path,
    team: CreatedTeam,
    files: dict[str, str],
    config: dict[str, Any],
) -> tuple[PluginRow, int]:
    """A plugin folder of `files` (path: text, dedented), installed and enabled for the team: (plugin, config id)."""
    folder = tmp_path / f"plugin-{uuid.uuid4().hex[:8]}"
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text))
    plugin = install_plugin(db, folder)
    return plugin, enable_plugin(db, plugin, team.team_id, config).id
