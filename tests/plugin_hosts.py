"""A worker's plugin machinery for integration tests (the real PluginHost on the test services), and
plugins installed from files written for the test."""

from __future__ import annotations

import contextlib
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import load_settings
from plugin_server.db.teams import CreatedTeam
from plugin_server.plugins.admin import enable_plugin, install_plugin
from plugin_server.plugins.host import PluginHost, open_plugin_host
from plugin_server.plugins.models import PluginRow
from plugin_server.plugins.tracking import CallTracker
from plugin_server.services.geoip import GeoIP


@contextlib.asynccontextmanager
async def running_plugin_host(
    pool: AsyncConnectionPool[Any], aredis: aioredis.Redis
) -> AsyncIterator[PluginHost]:
    """A PluginHost with TASK_TIMEOUT 5 and no GeoIP; its registry is empty until `registry.reload()`."""
    settings = load_settings({}, TASK_TIMEOUT=5)
    async with open_plugin_host(
        settings, pool, aredis, geoip=GeoIP.disabled(), tracker=CallTracker(None)
    ) as host:
        yield host


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
