"""The hung-call marks as PluginRunner reads them (real Redis, real JS plugins): a call marked hung is
skipped whether or not the plugin was set up when its batch came, and the marks are read only for the
plugins that have the method (a processEvent-only plugin's onEvent phase asks Redis nothing)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.plugins.meta.storage import PluginStorage
from plugin_server.plugins.run import PluginRunner
from plugin_server.plugins.tracking import HungMarks, hung_key, on_event_label
from tests.integration.test_js_plugin_files import event
from tests.plugin_hosts import RunningPlugins, install_files

Db = psycopg.Connection[Any]

BOTH = """
async function onEvent(event, { storage }) {
    await storage.set('on:' + event.uuid, true)
}
function processEvent(event) {
    event.properties.seen = true
    return event
}
module.exports = { processEvent, onEvent }
"""

PROCESS_ONLY = """
function processEvent(event) {
    event.properties.seen = true
    return event
}
module.exports = { processEvent }
"""


class AskedMarks(HungMarks):
    """HungMarks (on the real Redis) that records which configs each lookup asked for."""

    def __init__(self, redis: aioredis.Redis) -> None:
        super().__init__(redis)
        self.asked: list[list[int]] = []

    async def of_many(self, plugin_config_ids: Iterable[int]) -> dict[int, frozenset[str]]:
        ids = list(plugin_config_ids)
        self.asked.append(ids)
        return await super().of_many(ids)


def install(db: Db, tmp_path: Path, team: CreatedTeam, source: str) -> int:
    files = {"plugin.json": json.dumps({"name": "hung test", "main": "index.js"}), "index.js": source}
    return install_files(db, tmp_path, team, files, {})[1]


async def test_marked_calls_are_skipped_before_and_after_setup(
    clean_db: Db,
    tmp_path: Path,
    team: CreatedTeam,
    pool: AsyncConnectionPool[Any],
    aredis: aioredis.Redis,
    running: RunningPlugins,
) -> None:
    config_id = install(clean_db, tmp_path, team, BOTH)
    await running.plugins.registry.reload()
    vm = running.plugins.registry.get(config_id)
    runner = PluginRunner(running.plugins.registry, AskedMarks(aredis))
    storage = PluginStorage(pool, config_id)
    for round_ in ("not set up yet", "set up"):
        assert vm is not None and vm.loaded == (round_ == "set up")
        hung_process, hung_on, fine = event(team), event(team), event(team)
        await aredis.sadd(hung_key(config_id), hung_process["uuid"], on_event_label(hung_on["uuid"]))
        processed = await runner.process_events([hung_process, fine])
        assert [e is not None and e["properties"].get("seen") for e in processed] == [None, True], round_
        await runner.on_events([hung_on, fine])
        assert await storage.get(f"on:{hung_on['uuid']}") is None, round_
        assert await storage.get(f"on:{fine['uuid']}") is True, round_


async def test_a_plugin_without_on_event_asks_no_marks_for_it_once_set_up(
    clean_db: Db, tmp_path: Path, team: CreatedTeam, aredis: aioredis.Redis, running: RunningPlugins
) -> None:
    config_id = install(clean_db, tmp_path, team, PROCESS_ONLY)
    await running.plugins.registry.reload()
    marks = AskedMarks(aredis)
    runner = PluginRunner(running.plugins.registry, marks)
    for _ in range(2):
        [processed] = await runner.process_events([event(team)])
        assert processed is not None and processed["properties"]["seen"] is True
        await runner.on_events([event(team)])
    # set up during the first processEvent phase: from then on only processEvent asks
    assert marks.asked == [[config_id], [], [config_id], []]
