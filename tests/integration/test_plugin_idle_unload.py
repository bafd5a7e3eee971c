"""PLUGIN_IDLE_UNLOAD_SECONDS through the real plugin machinery: an instance unused for that long is torn down
(teardownPlugin runs, a JS isolate is closed) and set up again on its next use; an instance in use (a
long job) is never unloaded, and jobs count as use."""

from __future__ import annotations

import asyncio
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

from plugin_server.db.teams import CreatedTeam
from plugin_server.jobs.queue import PluginJob
from plugin_server.plugins.admin import enable_plugin, install_plugin
from plugin_server.plugins.js.runtime import JSPlugin
from plugin_server.plugins.meta.storage import PluginStorage
from plugin_server.plugins.run import PluginRunner
from tests.plugin_hosts import RunningPlugins, running_plugins

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
async def running(
    clean_db: Db, pool: AsyncConnectionPool[Any], aredis: aioredis.Redis
) -> AsyncIterator[RunningPlugins]:
    async with running_plugins(pool, aredis, PLUGIN_IDLE_UNLOAD_SECONDS=IDLE_SECONDS) as machinery:
        yield machinery


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


async def wait_until_unloaded(running: RunningPlugins, config_id: int) -> None:
    vm = running.plugins.registry.get(config_id)
    assert vm is not None
    for _ in range(100):
        if not vm.loaded:
            await running.plugins.registry.settle()
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the idle instance was not unloaded")


@pytest.mark.parametrize(("main", "source"), [("index.py", PYTHON_PLUGIN), ("index.js", JS_PLUGIN)])
async def test_an_idle_instance_is_torn_down_and_set_up_again_on_next_use(
    clean_db: Db,
    tmp_path: Path,
    team: CreatedTeam,
    pool: AsyncConnectionPool[Any],
    running: RunningPlugins,
    main: str,
    source: str,
) -> None:
    config_id = install(clean_db, tmp_path, team, main, source)
    await running.plugins.registry.reload()
    runner = PluginRunner(running.plugins.registry, running.services.hung)
    vm = running.plugins.registry.get(config_id)
    assert vm is not None and not vm.loaded

    [first] = await runner.process_events([event(team)])
    assert first is not None and first["properties"]["seen"] is True
    assert vm.loaded
    instance = await vm.get()
    assert await counts(pool, config_id) == (1, None)

    await wait_until_unloaded(running, config_id)
    assert await counts(pool, config_id) == (1, 1)
    if isinstance(instance, JSPlugin):
        assert instance._isolate is None  # the isolate was closed, its memory freed

    [second] = await runner.process_events([event(team)])
    assert second is not None and second["properties"]["seen"] is True
    assert vm.loaded
    assert await vm.get() is not instance
    assert await counts(pool, config_id) == (2, 1)


async def test_an_instance_in_use_is_not_unloaded_and_jobs_count_as_use(
    clean_db: Db, tmp_path: Path, team: CreatedTeam, pool: AsyncConnectionPool[Any], running: RunningPlugins
) -> None:
    config_id = install(clean_db, tmp_path, team, "index.py", PYTHON_PLUGIN)
    await running.plugins.registry.reload()
    vm = running.plugins.registry.get(config_id)
    assert vm is not None

    # a job running for 4 idle periods keeps its instance; it is unloaded only after the job ends
    job = PluginJob(
        type="slow",
        payload=IDLE_SECONDS * 4,
        plugin_config_id=config_id,
        plugin_config_team=team.team_id,
        run_at=datetime.now(UTC),
    )
    in_flight = asyncio.create_task(running.plugins.job_runner.run(job))
    await asyncio.sleep(IDLE_SECONDS * 3)
    assert vm.loaded and not in_flight.done()
    await in_flight
    assert await counts(pool, config_id) == (1, None)
    await wait_until_unloaded(running, config_id)
    assert await counts(pool, config_id) == (1, 1)

    # a job on an unloaded instance sets it up again
    await running.plugins.job_runner.run(
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
    clean_db: Db, tmp_path: Path, team: CreatedTeam, pool: AsyncConnectionPool[Any], aredis: aioredis.Redis
) -> None:
    config_id = install(clean_db, tmp_path, team, "index.py", PYTHON_PLUGIN)
    async with running_plugins(pool, aredis, PLUGIN_IDLE_UNLOAD_SECONDS=0) as never_unloading:
        registry = never_unloading.plugins.registry
        await registry.reload()
        runner = PluginRunner(registry, never_unloading.services.hung)
        await runner.process_events([event(team)])
        await asyncio.sleep(IDLE_SECONDS * 3)
        vm = registry.get(config_id)
        assert vm is not None and vm.loaded
        assert await counts(pool, config_id) == (1, None)
    assert await counts(pool, config_id) == (1, 1)
