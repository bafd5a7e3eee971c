"""PLUGIN_IDLE_UNLOAD_SECONDS through the real PluginHost: an instance unused for that long is torn down
(teardownPlugin runs, a JS isolate is closed) and set up again on its next use; an instance in use (a
long job) is never unloaded, and jobs count as use."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import textwrap
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import load_settings
from plugin_server.db.teams import CreatedTeam
from plugin_server.jobs.queue import PluginJob
from plugin_server.plugins.admin import enable_plugin, install_plugin
from plugin_server.plugins.host import PluginHost, open_plugin_host
from plugin_server.plugins.js.runtime import JSPlugin
from plugin_server.plugins.meta.storage import PluginStorage
from plugin_server.plugins.run import PluginRunner
from plugin_server.plugins.tracking import CallTracker
from plugin_server.services.geoip import GeoIP

Db = psycopg.Connection[Any]

IDLE_SECONDS = 0.3

PYTHON_PLUGIN = """
import asyncio

async def setup_plugin(meta):
    await meta.utils.cursor.increment("setups")

async def teardown_plugin(meta):
    await meta.utils.cursor.increment("teardowns")

def process_event(event, meta):
    event["properties"]["seen"] = True
    return event

async def slow(payload, meta):
    await asyncio.sleep(float(payload))

jobs = {"slow": slow}
"""

JS_PLUGIN = """
async function setupPlugin({ utils }) {
    await utils.cursor.increment('setups')
}
async function teardownPlugin({ utils }) {
    await utils.cursor.increment('teardowns')
}
function processEvent(event) {
    event.properties.seen = true
    return event
}
module.exports = { setupPlugin, teardownPlugin, processEvent }
"""


def install(db: Db, tmp_path: Path, team: CreatedTeam, main: str, source: str) -> int:
    folder = tmp_path / f"plugin-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    (folder / "plugin.json").write_text(json.dumps({"name": "idle test plugin", "main": main}))
    (folder / main).write_text(textwrap.dedent(source))
    return enable_plugin(db, install_plugin(db, folder), team.team_id, {}).id


@pytest.fixture
async def host(
    clean_db: Db, pool: AsyncConnectionPool[Any], aredis: aioredis.Redis
) -> AsyncIterator[PluginHost]:
    settings = load_settings({}, PLUGIN_IDLE_UNLOAD_SECONDS=IDLE_SECONDS, TASK_TIMEOUT=5)
    async with open_plugin_host(
        settings, pool, aredis, geoip=GeoIP.disabled(), tracker=CallTracker(None)
    ) as plugin_host:
        yield plugin_host


def event(team: CreatedTeam) -> dict[str, Any]:
    return {
        "uuid": str(uuid.uuid4()),
        "event": "$pageview",
        "distinct_id": "someone",
        "team_id": team.team_id,
        "properties": {},
    }


async def counts(pool: AsyncConnectionPool[Any], config_id: int) -> tuple[Any, Any]:
    storage = PluginStorage(pool, config_id)
    return await storage.get("setups"), await storage.get("teardowns")


async def wait_until_unloaded(host: PluginHost, config_id: int) -> None:
    vm = host.registry.get(config_id)
    assert vm is not None
    for _ in range(100):
        if not vm.loaded:
            await host.registry.settle()
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the idle instance was not unloaded")


@pytest.mark.parametrize(("main", "source"), [("index.py", PYTHON_PLUGIN), ("index.js", JS_PLUGIN)])
async def test_an_idle_instance_is_torn_down_and_set_up_again_on_next_use(
    clean_db: Db,
    tmp_path: Path,
    team: CreatedTeam,
    pool: AsyncConnectionPool[Any],
    host: PluginHost,
    main: str,
    source: str,
) -> None:
    config_id = install(clean_db, tmp_path, team, main, source)
    await host.registry.reload()
    runner = PluginRunner(host.registry, host.hung)
    vm = host.registry.get(config_id)
    assert vm is not None and not vm.loaded

    [first] = await runner.process_events([event(team)])
    assert first is not None and first["properties"]["seen"] is True
    assert vm.loaded
    instance = await vm.get()
    assert await counts(pool, config_id) == (1, None)

    await wait_until_unloaded(host, config_id)
    assert await counts(pool, config_id) == (1, 1)
    if isinstance(instance, JSPlugin):
        assert instance._isolate is None  # the isolate was closed, its memory freed

    [second] = await runner.process_events([event(team)])
    assert second is not None and second["properties"]["seen"] is True
    assert vm.loaded
    assert await vm.get() is not instance
    assert await counts(pool, config_id) == (2, 1)


async def test_an_instance_in_use_is_not_unloaded_and_jobs_count_as_use(
    clean_db: Db, tmp_path: Path, team: CreatedTeam, pool: AsyncConnectionPool[Any], host: PluginHost
) -> None:
    config_id = install(clean_db, tmp_path, team, "index.py", PYTHON_PLUGIN)
    await host.registry.reload()
    vm = host.registry.get(config_id)
    assert vm is not None

    # a job running for 4 idle periods keeps its instance; it is unloaded only after the job ends
    job = PluginJob(
        type="slow",
        payload=IDLE_SECONDS * 4,
        plugin_config_id=config_id,
        plugin_config_team=team.team_id,
        run_at=datetime.now(UTC),
    )
    running = asyncio.create_task(host.run_job(job))
    await asyncio.sleep(IDLE_SECONDS * 3)
    assert vm.loaded and not running.done()
    await running
    assert await counts(pool, config_id) == (1, None)
    await wait_until_unloaded(host, config_id)
    assert await counts(pool, config_id) == (1, 1)

    # a job on an unloaded instance sets it up again
    await host.run_job(
        PluginJob(
            type="slow",
            payload=0,
            plugin_config_id=config_id,
            plugin_config_team=team.team_id,
            run_at=datetime.now(UTC),
        )
    )
    assert vm.loaded
    assert await counts(pool, config_id) == (2, 1)


async def test_zero_disables_idle_unloading(
    clean_db: Db, tmp_path: Path, team: CreatedTeam, pool: AsyncConnectionPool[Any], host: PluginHost
) -> None:
    config_id = install(clean_db, tmp_path, team, "index.py", PYTHON_PLUGIN)
    settings = host.settings.model_copy(update={"PLUGIN_IDLE_UNLOAD_SECONDS": 0})
    never_unloading = dataclasses.replace(host, settings=settings)
    try:
        await never_unloading.registry.reload()
        runner = PluginRunner(never_unloading.registry, never_unloading.hung)
        await runner.process_events([event(team)])
        await asyncio.sleep(IDLE_SECONDS * 3)
        vm = never_unloading.registry.get(config_id)
        assert vm is not None and vm.loaded
        assert await counts(pool, config_id) == (1, None)
    finally:
        await never_unloading.registry.close()
    assert await counts(pool, config_id) == (1, 1)
