"""A worker prepares its plugins' code when it reloads them (registry.reload: a JS plugin's modules
transpiled into the worker's cache), so that a plugin's first events do not wait for TypeScript's
compiler; the plugin itself is still set up at its first use, and code that does not compile is
reported by that setup, as before."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg

from plugin_server.db.teams import CreatedTeam, create_organization_and_team
from plugin_server.plugins.admin import enable_plugin
from plugin_server.plugins.js.transpile import get_transpiler
from plugin_server.plugins.models import PluginConfigInForce
from plugin_server.plugins.registry import PluginRegistry
from plugin_server.plugins.run import PluginRunner
from tests.conftest import wait_until
from tests.plugin_hosts import RunningPlugins, install_files

Db = psycopg.Connection[Any]


def plugin_files(marker: str) -> dict[str, str]:
    """A TypeScript plugin of two files whose sources no other test has transpiled (the marker)."""
    return {
        "plugin.json": json.dumps({"name": "prepared", "main": "index.ts"}),
        "index.ts": f"""
            // {marker}
            import {{ mark }} from './mark'
            export function processEvent(event: any) {{
                event.properties.marked = mark()
                return event
            }}
        """,
        "mark.ts": f"""
            // {marker}
            export const mark = (): string => 'yes'
        """,
    }


def event(team: CreatedTeam) -> dict[str, Any]:
    return {
        "uuid": str(uuid.uuid4()),
        "event": "e",
        "distinct_id": "d",
        "team_id": team.team_id,
        "properties": {},
    }


async def test_a_reload_transpiles_a_js_plugins_modules_before_its_first_use(
    clean_db: Db, tmp_path: Path, team: CreatedTeam, running: RunningPlugins
) -> None:
    files = plugin_files(uuid.uuid4().hex)
    _, config_id = install_files(clean_db, tmp_path, team, files, {})
    folder = next(tmp_path.glob("plugin-*"))
    sources = {name: (folder / name).read_text() for name in ("index.ts", "mark.ts")}
    transpiler = get_transpiler()
    assert all(transpiler.cached(text, name) is None for name, text in sources.items())

    await running.plugins.registry.reload()

    assert all(transpiler.cached(text, name) is not None for name, text in sources.items())
    vm = running.plugins.registry.get(config_id)
    assert vm is not None and not vm.loaded  # prepared, not set up
    [processed] = await PluginRunner(running.plugins.registry, running.services.hung).process_events(
        [event(team)]
    )
    assert processed is not None and processed["properties"]["marked"] == "yes"


async def test_code_that_does_not_compile_is_reported_by_the_setup_not_the_reload(
    clean_db: Db, tmp_path: Path, team: CreatedTeam, running: RunningPlugins
) -> None:
    broken = {
        "plugin.json": json.dumps({"name": "broken", "main": "index.js"}),
        "index.js": "function processEvent(event) { return event ",
    }
    _, config_id = install_files(clean_db, tmp_path, team, broken, {})

    await running.plugins.registry.reload()

    vm = running.plugins.registry.get(config_id)
    assert vm is not None and await vm.get() is None
    row = clean_db.execute("SELECT error FROM posthog_pluginconfig WHERE id = %s", (config_id,)).fetchone()
    assert row is not None and row[0] is not None and "index.js" in row[0]["message"]


async def test_a_plugin_enabled_many_times_is_prepared_once_and_only_when_new(
    clean_db: Db, tmp_path: Path, team: CreatedTeam, running: RunningPlugins
) -> None:
    plugin, _ = install_files(clean_db, tmp_path, team, plugin_files(uuid.uuid4().hex), {})
    clean_db.execute("UPDATE posthog_plugin SET is_global = true WHERE id = %s", (plugin.id,))
    plugin = replace(plugin, is_global=True)  # enabled for teams of other organizations too
    for team_id in (team.team_id + 1, team.team_id + 2):
        create_organization_and_team(clean_db, team_id=team_id)
        enable_plugin(clean_db, plugin, team_id, {})
    prepared: list[int] = []

    async def prepare(config: PluginConfigInForce) -> None:
        prepared.append(config.plugin.id)

    registry = PluginRegistry(
        running.services.pool, running.plugins.registry._create_vm, prepare_code=prepare
    )
    try:
        await registry.reload()
        assert len(list(registry.all())) == 3 and prepared == [plugin.id]
        await registry.reload()  # nothing new: nothing to prepare
        assert prepared == [plugin.id]
    finally:
        await registry.close()


async def test_a_reload_waits_for_slow_code_only_so_long_and_prepares_it_in_the_background(
    clean_db: Db, tmp_path: Path, team: CreatedTeam, running: RunningPlugins
) -> None:
    """A plugin whose code takes long to compile cannot hold up a worker's start (and so every team)."""
    install_files(clean_db, tmp_path, team, plugin_files(uuid.uuid4().hex), {})
    release = asyncio.Event()
    prepared: list[int] = []

    async def slow_prepare(config: PluginConfigInForce) -> None:
        await release.wait()
        prepared.append(config.plugin.id)

    registry = PluginRegistry(
        running.services.pool,
        running.plugins.registry._create_vm,
        prepare_code=slow_prepare,
        prepare_patience=0.2,
    )
    try:
        started = time.monotonic()
        await asyncio.wait_for(registry.reload(), 5)
        assert time.monotonic() - started >= 0.2 and prepared == []
        release.set()
        await wait_until(lambda: len(prepared) == 1)
    finally:
        await registry.close()
