"""The $plugins_succeeded / $plugins_failed / $plugins_deferred tags PluginRunner puts on each event
(real JS plugins of one team, in a chain): each event lists what happened to it, and an event no
plugin replaced is tagged on a copy, never on the caller's own dict."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import psycopg

from plugin_server.db.teams import CreatedTeam
from plugin_server.plugins.run import PluginRunner
from tests.integration.test_js_plugin_files import event
from tests.plugin_hosts import RunningPlugins, install_files

Db = psycopg.Connection[Any]

FAILS_ON_MARKED = """
function processEvent(event) {
    if (event.properties.fail) throw new Error('marked')
    event.properties.first = true
    return event
}
module.exports = { processEvent }
"""

SECOND = """
function processEvent(event) {
    event.properties.second = true
    return event
}
function onEvent(event) {}
module.exports = { processEvent, onEvent }
"""


def install(db: Db, tmp_path: Path, team: CreatedTeam, name: str, source: str) -> str:
    files = {"plugin.json": json.dumps({"name": name, "main": "index.js"}), "index.js": source}
    return f"{name} ({install_files(db, tmp_path, team, files, {})[1]})"


async def test_each_event_lists_the_plugins_that_succeeded_failed_and_are_deferred(
    clean_db: Db, tmp_path: Path, team: CreatedTeam, running: RunningPlugins
) -> None:
    first = install(clean_db, tmp_path, team, "first", FAILS_ON_MARKED)
    second = install(clean_db, tmp_path, team, "second", SECOND)
    await running.plugins.registry.reload()
    runner = PluginRunner(running.plugins.registry, running.services.hung)
    fine, marked = event(team, kept="yes"), event(team, fail=True)
    fine_text, marked_text = json.dumps(fine), json.dumps(marked)
    processed = await runner.process_events([fine, marked])
    assert [e and e["properties"] for e in processed] == [
        {
            "kept": "yes",
            "first": True,
            "second": True,
            "$plugins_succeeded": [first, second],
            "$plugins_failed": [],
            "$plugins_deferred": [second],
        },
        {
            "fail": True,
            "second": True,
            "$plugins_succeeded": [second],
            "$plugins_failed": [first],
            "$plugins_deferred": [second],
        },
    ]
    assert [json.dumps(fine), json.dumps(marked)] == [fine_text, marked_text]  # the caller's, untouched
    lists = [e["properties"][tag] for e in processed if e for tag in e["properties"] if tag.startswith("$")]
    assert len({id(tags) for tags in lists}) == len(lists)  # no list shared by two events


async def test_an_event_no_plugin_replaced_is_tagged_on_a_copy(
    clean_db: Db, tmp_path: Path, team: CreatedTeam, running: RunningPlugins
) -> None:
    only = install(clean_db, tmp_path, team, "only", FAILS_ON_MARKED)
    await running.plugins.registry.reload()
    runner = PluginRunner(running.plugins.registry, running.services.hung)
    marked = event(team, fail=True)
    before = copy.deepcopy(marked)
    [processed] = await runner.process_events([marked])
    assert processed is not None and processed["properties"] == {
        "fail": True,
        "$plugins_succeeded": [],
        "$plugins_failed": [only],
        "$plugins_deferred": [],
    }
    assert marked == before


async def test_properties_a_plugin_made_not_an_object_become_the_tags_alone(
    clean_db: Db, tmp_path: Path, team: CreatedTeam, running: RunningPlugins
) -> None:
    source = "function processEvent(event) { event.properties = 'text'; return event }\nmodule.exports = { processEvent }"
    name = install(clean_db, tmp_path, team, "flattens", source)
    await running.plugins.registry.reload()
    runner = PluginRunner(running.plugins.registry, running.services.hung)
    [processed] = await runner.process_events([event(team, kept="yes")])
    assert processed is not None and processed["properties"] == {
        "$plugins_succeeded": [name],
        "$plugins_failed": [],
        "$plugins_deferred": [],
    }
