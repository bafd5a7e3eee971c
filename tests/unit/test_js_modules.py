"""Multi-file JavaScript plugins: relative require/import inside the plugin's files (./lib, index
files, .ts/.js/.json, `..`), each file transpiled once, node's CommonJS cycle semantics, stack traces
that name the file, and one load error naming every missing module and file."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from plugin_server.plugins.instance import PluginError
from plugin_server.plugins.js.modules import PluginModules, load_modules, resolve
from plugin_server.plugins.js.runtime import JSError
from plugin_server.plugins.js.transpile import Transpiled, Transpiler
from tests.js_support import loaded_plugin, process_one


class CountingTranspiler(Transpiler):
    """Counts the files given to it, cached or not."""

    def __init__(self) -> None:
        super().__init__(guards_name="__guards")
        self.asked: list[str] = []

    async def transpile_module_async(self, source: str, file_name: str) -> Transpiled:
        self.asked.append(file_name)
        return await super().transpile_module_async(source, file_name)


@pytest.fixture(scope="module")
def transpiler() -> Iterator[CountingTranspiler]:
    compiler = CountingTranspiler()
    yield compiler
    compiler.close()


def files_of(**texts: str) -> dict[str, bytes]:
    """Files by path (`src__lib_ts` names `src/lib.ts`: `__` is a folder, the last `_` the dot)."""
    files = {}
    for key, text in texts.items():
        stem, _, extension = key.rpartition("_")
        files[f"{stem.replace('__', '/')}.{extension}"] = textwrap.dedent(text).encode()
    return files


async def run(
    transpiler: Transpiler, files: dict[str, bytes], main: str, **properties: Any
) -> dict[str, Any]:
    modules = await load_modules(files, main, transpiler)
    async with loaded_plugin(modules, guards_name=transpiler.guards_name) as plugin:
        await plugin.setup()
        return (await process_one(plugin, properties))["properties"]


def test_resolution_follows_node_and_typescript() -> None:
    files = dict.fromkeys(
        [
            "src/index.ts",
            "src/lib.ts",
            "src/lib.js",
            "src/util/index.js",
            "src/data.json",
            "src/types.d.ts",
            "shared.js",
            "src/only.js",
        ],
        b"",
    )
    assert resolve(files, "src/index.ts", "./lib") == "src/lib.ts"  # TypeScript's source first
    assert resolve(files, "src/index.ts", "./lib.js") == "src/lib.js"  # an exact path wins
    assert resolve(files, "src/index.ts", "./util") == "src/util/index.js"
    assert resolve(files, "src/index.ts", "./util/") == "src/util/index.js"
    assert resolve(files, "src/index.ts", "./data") == "src/data.json"
    assert resolve(files, "src/index.ts", "../shared") == "shared.js"
    assert resolve(files, "src/util/index.js", "..") == "src/index.ts"
    assert resolve(files, "src/util/index.js", "../only") == "src/only.js"
    assert resolve(files, "src/index.ts", "./types") is None  # declarations are never modules
    assert resolve(files, "src/index.ts", "../../etc/passwd") is None  # outside the plugin
    assert resolve(files, "src/index.ts", "/etc/passwd") is None
    assert resolve(files, "src/index.ts", "./missing") is None


async def test_a_typescript_plugin_in_several_files(transpiler: CountingTranspiler) -> None:
    files = files_of(
        plugin_json='{"main": "src/index.ts"}',
        src__index_ts="""
            import { PluginEvent } from '@posthog/plugin-scaffold'
            import { SchemaEvent } from './types'
            import { label, counter } from './lib'
            import defaults from './defaults.json'
            import * as util from './util'
            export function processEvent(event: PluginEvent): PluginEvent {
                const schema: SchemaEvent = { name: event.event }
                event.properties.label = label(schema.name)
                event.properties.count = counter()
                event.properties.defaults = defaults
                event.properties.shout = util.shout('hi')
                return event
            }
        """,
        src__types_ts="""
            import { PluginMeta } from 'posthog-plugins'
            export interface SchemaEvent { name: string }
            export type Meta = PluginMeta
        """,
        src__lib_ts="""
            import { shout } from './util'
            let count = 0
            export const label = (name: string): string => shout(name) + '!'
            export function counter(): number { return ++count }
        """,
        src__util__index_js="exports.shout = (text) => text.toUpperCase()",
        src__defaults_json='{"level": 3}',
        src__unused_ts="this file is not valid TypeScript, and nobody requires it {",
    )
    transpiler.asked.clear()
    properties = await run(transpiler, files, "src/index.ts")
    assert properties == {"label": "E!", "count": 1, "defaults": {"level": 3}, "shout": "HI"}
    # each file once, though util is required twice; the type-only module is never loaded
    assert sorted(transpiler.asked) == ["src/index.ts", "src/lib.ts", "src/util/index.js"]


async def test_cycles_get_the_partial_exports_as_in_node(transpiler: Transpiler) -> None:
    files = files_of(
        index_js="""
            const a = require('./a')
            const b = require('./b')
            exports.processEvent = (event) => {
                event.properties.log = [...a.log]
                event.properties.same = a === require('./a') && b === require('./b.js')
                return event
            }
        """,
        a_js="""
            exports.log = ['a starts']
            exports.done = false
            const b = require('./b')
            exports.log.push(`a sees b.done=${b.done}`)
            exports.done = true
        """,
        b_js="""
            const a = require('./a')
            a.log.push(`b sees a.done=${a.done}`)
            exports.done = true
        """,
    )
    properties = await run(transpiler, files, "index.js")
    assert properties["log"] == ["a starts", "b sees a.done=false", "a sees b.done=true"]
    assert properties["same"] is True


async def test_module_exports_replaced_and_a_failed_module_is_not_kept(transpiler: Transpiler) -> None:
    files = files_of(
        index_js="""
            let first
            try { require('./flaky') } catch (error) { first = error.message }
            const second = require('./flaky')
            module.exports = {
                processEvent(event) {
                    event.properties.first = first
                    event.properties.second = second()
                    return event
                },
            }
        """,
        flaky_js="""
            globalThis.__attempts = (globalThis.__attempts || 0) + 1
            if (globalThis.__attempts === 1) throw new Error('not yet')
            module.exports = () => `attempt ${globalThis.__attempts}`
        """,
    )
    assert await run(transpiler, files, "index.js") == {"first": "not yet", "second": "attempt 2"}


async def test_one_error_names_every_missing_module_and_file(transpiler: Transpiler) -> None:
    files = files_of(
        index_ts="""
            import { S3 } from 'left-pad'
            import { helper } from './helper'
            import thing from './nowhere'
            export function processEvent(event) { return helper(S3, thing, event) }
        """,
        helper_ts="""
            import lodash from 'lodash'
            import again from 'left-pad'
            import up from '../outside'
            export const helper = (...args) => [lodash, again, up, args]
        """,
    )
    modules = await load_modules(files, "index.ts", transpiler)
    with pytest.raises(JSError) as raised:
        async with loaded_plugin(modules, guards_name=transpiler.guards_name):
            pass
    assert str(raised.value) == (
        "Cannot import 'left-pad', 'lodash'! These packages are not provided by PostHog in plugins. "
        "Cannot find module './nowhere' from 'index.ts', '../outside' from 'helper.ts'."
    )


async def test_one_missing_package_keeps_the_original_message(transpiler: Transpiler) -> None:
    modules = await load_modules(
        files_of(index_js="const pad = require('left-pad'); exports.processEvent = (e) => pad(e)"),
        "index.js",
        transpiler,
    )
    with pytest.raises(
        JSError, match=r"^Cannot import 'left-pad'! This package is not provided by PostHog in plugins\.$"
    ):
        async with loaded_plugin(modules, guards_name=transpiler.guards_name):
            pass


async def test_a_name_computed_at_run_time_is_resolved_only_among_literal_ones(
    transpiler: Transpiler,
) -> None:
    files = files_of(
        index_js="""
            require('./known')
            exports.processEvent = (event) => {
                const name = event.properties.name
                try {
                    event.properties.found = typeof require(name)
                } catch (error) {
                    event.properties.found = `${error.code}: ${error.message}`
                }
                return event
            }
        """,
        known_js="module.exports = 1",
        other_js="module.exports = 2",
    )
    modules = await load_modules(files, "index.js", transpiler)
    async with loaded_plugin(modules, guards_name=transpiler.guards_name) as plugin:
        found = {
            name: (await process_one(plugin, {"name": name}))["properties"]["found"]
            for name in ("./known", "./other", "node:crypto", "fs", "pg")
        }
    assert found == {
        "./known": "number",
        "./other": "MODULE_NOT_FOUND: Cannot find module './other' from 'index.js'",
        "node:crypto": "object",
        "fs": "MODULE_NOT_FOUND: Cannot import 'fs'! This package is not provided by PostHog in plugins.",
        # set up only in the isolates of plugins whose code names it (provided.py)
        "pg": "MODULE_NOT_FOUND: Cannot import 'pg' by a name the code computes: write require('pg') "
        "(or import it) in the plugin's code, so that the plugin server sets the module up for it.",
    }


async def test_stack_traces_name_the_file_and_line(transpiler: Transpiler) -> None:
    files = files_of(
        index_ts="""
            import { fail } from './lib/fail'
            export function processEvent(event) { return fail(event) }
        """,
        lib__fail_ts="""
            // a comment line
            export function fail(event: unknown): never {
                throw new Error('broken in lib')
            }
        """,
    )
    modules = await load_modules(files, "index.ts", transpiler)
    async with loaded_plugin(modules, guards_name=transpiler.guards_name) as plugin:
        (outcome,) = await plugin.process_events(
            [{"event": "e", "distinct_id": "d", "properties": {}}], frozenset()
        )
    assert isinstance(outcome, JSError) and str(outcome) == "broken in lib"
    # lines and columns of the TypeScript sources, not of the transpiled code
    assert outcome.stack is not None and "at fail (plugin-1/lib/fail.ts:4:11)" in outcome.stack
    assert "plugin-1/index.ts:3:" in outcome.stack


async def test_invalid_json_names_the_file(transpiler: Transpiler) -> None:
    files = files_of(
        index_js="const data = require('./data.json')\nexports.processEvent = (e) => e", data_json="{nope"
    )
    modules = await load_modules(files, "index.js", transpiler)
    with pytest.raises(JSError, match=r"^data\.json: "):
        async with loaded_plugin(modules, guards_name=transpiler.guards_name):
            pass


async def test_a_single_module_plugin_has_no_files_to_require() -> None:
    modules = PluginModules.single("exports.processEvent = (event) => event", requires=("./lib",))
    with pytest.raises(PluginError, match=r"Cannot find module './lib' from 'index\.js'"):
        async with loaded_plugin(modules):
            pass
