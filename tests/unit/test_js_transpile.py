"""Transpiling plugin code inside V8 (plugins/js/transpile.py) and the guards it injects (guards.js).

The transpiled code is run in fresh mini-racer isolates, as the runtime would run it: guards.js makes
the guards object, and the module function gets `exports`, a stub `require`, `module` and the guards.
TASK_TIMEOUT is 0.2 s here to keep the module fast.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from py_mini_racer import JSEvalException, JSPromise

from plugin_server.plugins.js import transpile as transpile_module
from plugin_server.plugins.js.engine import new_racer
from plugin_server.plugins.js.transpile import PluginTranspileError, Transpiler, guards_js

TIMEOUT_MS = 200
# How late a guard may fire on this (possibly busy) machine.
SLACK_SECONDS = 1.5

# Modules the stub `require` hands out: a callable CommonJS module, a plain object and an ES module.
REQUIRE_STUB = """
globalThis.__required = [];
globalThis.__require = (name) => {
    __required.push(name);
    const modules = {
        "node-fetch": Object.assign(function fetch(url) { return "fetched " + url }, { Headers: "H" }),
        "crypto": { createHash: "createHash", randomUUID: "randomUUID" },
        "esm-lib": { __esModule: true, default: "the default", named: "the named" },
    };
    if (!(name in modules)) throw new Error(`Cannot find module '${name}'`);
    return modules[name];
};
"""

PLUGIN_TS = """
import { createHash } from "crypto"
import fetch from "node-fetch"

interface PluginEvent { event: string; distinct_id: string; properties?: Record<string, unknown> }
type Meta = { config: { prefix?: string; maxItems: string }; global: { seen: number } }
enum Level { Low = 1, High = 2 }

class Counter<T> {
    #counts = new Map<T, number>()
    add(item: T): number {
        const next = (this.#counts.get(item) ?? 0) + 1
        this.#counts.set(item, next)
        return next
    }
}

const counter = new Counter<string>()

export function setupPlugin({ config, global }: Meta): void {
    global.seen = 0
    if (!config.maxItems) throw new Error("maxItems is required")
}

export async function processEvent(event: PluginEvent, { config, global }: Meta): Promise<PluginEvent> {
    global.seen++
    const props = { ...(event.properties ?? {}) }
    for (const [key, value] of Object.entries(props)) {
        if (typeof value === "string" && value.length > 100) props[key] = value.slice(0, 100)
    }
    let tags: string[] = []
    for (let i = 0; i < Number(config.maxItems); i++) tags.push(`${config.prefix ?? "t"}${i}`)
    props.count = counter.add(event.event)
    props.level = props.count > 10 ? Level.High : Level.Low
    props.hash = typeof createHash
    props.fetched = await fetch(event.distinct_id)
    return { ...event, properties: { ...props, tags } }
}

export async function runEveryMinute(meta: Meta): Promise<void> {
    let retries = 0
    while (retries < 3) {
        try {
            await fetch("https://example.com")
            break
        } catch (error) {
            retries++
        }
    }
}
"""


@pytest.fixture(scope="module")
def transpiler() -> Iterator[Transpiler]:
    shared = Transpiler()
    yield shared
    shared.close()


class Plugin:
    """Transpiled plugin code loaded in its own isolate, with helpers to call it."""

    def __init__(self, transpiler: Transpiler, source: str, file_name: str, guards_options: str) -> None:
        self.code = transpiler.transpile(source, file_name)
        self.racer = new_racer()
        self.racer.eval(f"globalThis.__guards = ({guards_js()})({guards_options});")
        self.racer.eval(REQUIRE_STUB)
        self.racer.eval(
            "globalThis.__module = { exports: {} };"
            f"({transpiler.wrap(self.code)})"
            ".call(__module.exports, __module.exports, __require, __module, __guards); undefined"
        )

    def eval(self, expression: str) -> Any:
        """The JSON-able value of an expression."""
        return json.loads(str(self.racer.eval(f"JSON.stringify({expression})")))

    def call_sync(self, expression: str) -> dict[str, Any]:
        """{"value": ...} or {"error": message} from a synchronous call."""
        result: dict[str, Any] = self.eval(
            f"(() => {{ try {{ return {{ value: {expression} }} }} catch (e) {{ return {{ error: e.message }} }} }})()"
        )
        return result

    def call_async(self, expression: str, wait: float = 10.0) -> dict[str, Any]:
        """{"value": ...} or {"error", "name", "caller"} once the promise of an async call settles."""
        promise = self.racer.eval(
            f"Promise.resolve({expression}).then((value) => JSON.stringify({{ value }}),"
            " (e) => JSON.stringify({ error: e.message, name: e.name, caller: e.caller }))"
        )
        assert isinstance(promise, JSPromise)
        result: dict[str, Any] = json.loads(str(promise.get(timeout=wait)))
        return result

    def still_usable(self) -> bool:
        return self.racer.eval("1 + 1") == 2


@pytest.fixture
def load(transpiler: Transpiler) -> Iterator[Any]:
    plugins: list[Plugin] = []

    def _load(
        source: str, file_name: str = "index.ts", timeout_ms: int = TIMEOUT_MS, guards_options: str = ""
    ) -> Plugin:
        plugin = Plugin(transpiler, source, file_name, guards_options or f"{{ timeoutMs: {timeout_ms} }}")
        plugins.append(plugin)
        return plugin

    yield _load
    for plugin in plugins:
        plugin.racer.close()


def loop_message(line: int, column: int, seconds: str = "0.2 seconds") -> str:
    return f"Script execution timed out after looping for {seconds} on line {line}:{column}"


PROMISE_MESSAGE = "Script execution timed out after promise waited for 0.2 seconds"


# --- transpiling ---------------------------------------------------------------------------------


def test_typescript_types_and_interfaces_are_removed(load: Any) -> None:
    plugin = load(PLUGIN_TS)
    assert "interface" not in plugin.code
    assert "PluginEvent" not in plugin.code
    assert "async function processEvent" in plugin.code  # async/await stay native (ES2022)
    assert "#counts" in plugin.code  # so do private fields
    meta = '{ config: { maxItems: "2" }, global: {} }'
    result = plugin.call_async(
        f'__module.exports.processEvent({{ event: "e", distinct_id: "d", properties: {{ a: 1 }} }}, {meta})'
    )
    assert result == {
        "value": {
            "event": "e",
            "distinct_id": "d",
            "properties": {
                "a": 1,
                "count": 1,
                "level": 1,
                "hash": "string",
                "fetched": "fetched d",
                "tags": ["t0", "t1"],
            },
        }
    }
    assert plugin.call_sync("__module.exports.setupPlugin({ config: {}, global: {} })") == {
        "error": "maxItems is required"
    }


def test_es_module_exports(load: Any) -> None:
    plugin = load(
        """
        export function processEvent(event) { return event }
        export const metrics = { total: "sum" }
        export default { onEvent: () => "default onEvent" }
        """,
        "index.js",
    )
    assert plugin.eval("typeof __module.exports.processEvent") == "function"
    assert plugin.eval("__module.exports.metrics") == {"total": "sum"}
    assert plugin.eval("__module.exports.default.onEvent()") == "default onEvent"
    assert plugin.eval("__module.exports.__esModule") is True


def test_commonjs_module_exports(load: Any) -> None:
    plugin = load(
        """
        const fetch = require("node-fetch")
        function processEvent(event) { return { ...event, fetched: fetch(event.url) } }
        module.exports = { processEvent }
        """,
        "index.js",
    )
    assert plugin.eval('__module.exports.processEvent({ url: "u" })') == {"url": "u", "fetched": "fetched u"}
    assert plugin.eval("__required") == ["node-fetch"]


def test_plain_script_functions_can_be_exposed(transpiler: Transpiler) -> None:
    # The original found the functions of a plugin that exports nothing on the VM's global object.
    code = transpiler.transpile(
        "function processEvent(event) { return event }\nvar jobs = { a: 1 }", "index.js"
    )
    with new_racer() as racer:
        racer.eval(f"globalThis.__guards = ({guards_js()})({{ timeoutMs: {TIMEOUT_MS} }});")
        found = racer.eval(
            f"const m = {{ exports: {{}} }}; const found = ({transpiler.wrap(code, ('processEvent', 'jobs', 'onEvent'))})"
            ".call(m.exports, m.exports, null, m, __guards);"
            "JSON.stringify([typeof found.processEvent, found.jobs, 'onEvent' in found, found.onEvent])"
        )
    assert json.loads(str(found)) == ["function", {"a": 1}, True, None]


def test_imports_become_require(load: Any) -> None:
    plugin = load(
        """
        import fetch from "node-fetch"
        import { createHash } from "crypto"
        import * as cryptoAll from "crypto"
        import esmDefault, { named } from "esm-lib"
        export const got = [fetch("x"), createHash, cryptoAll.randomUUID, esmDefault, named]
        """
    )
    assert 'require("node-fetch")' in plugin.code
    assert 'require("crypto")' in plugin.code
    assert "import " not in plugin.code
    assert plugin.eval("__module.exports.got") == [
        "fetched x",
        "createHash",
        "randomUUID",
        "the default",
        "the named",
    ]
    assert plugin.eval("__required") == ["node-fetch", "crypto", "crypto", "esm-lib"]


def test_type_only_imports_are_dropped(transpiler: Transpiler) -> None:
    code = transpiler.transpile(
        'import type { PluginEvent } from "@posthog/plugin-scaffold"\n'
        'import { Plugin } from "@posthog/plugin-scaffold"\n'
        "export const processEvent = (e: PluginEvent): Plugin | null => null\n",
        "index.ts",
    )
    assert "require" not in code


def test_js_file_with_type_annotations_still_compiles(transpiler: Transpiler) -> None:
    # The original compiled every plugin as index.ts.
    code = transpiler.transpile("export function f(a: number): number { return a }", "index.js")
    assert "function f(a)" in code


def test_syntax_error_names_file_line_and_column(transpiler: Transpiler) -> None:
    with pytest.raises(PluginTranspileError) as caught:
        transpiler.transpile(
            "export function processEvent(event) {\n    return { ...event,\n}\n", "src/index.ts"
        )
    error = caught.value
    assert (error.file_name, error.line, error.column) == ("src/index.ts", 4, 1)
    assert error.message == "'}' expected."
    assert str(error) == "src/index.ts:4:1: '}' expected."


def test_syntax_error_in_js_reports_the_js_parser(transpiler: Transpiler) -> None:
    with pytest.raises(PluginTranspileError) as caught:
        transpiler.transpile("function (event) { return event }", "index.js")
    assert str(caught.value).startswith("index.js:1:10: Identifier expected.")


def test_top_level_await_is_refused(transpiler: Transpiler) -> None:
    with pytest.raises(PluginTranspileError, match=r"^index\.js:2:1: Top-level 'await' is not supported"):
        transpiler.transpile("const a = 1\nawait fetch(a)\n", "index.js")


def test_top_level_for_await_is_refused(transpiler: Transpiler) -> None:
    with pytest.raises(PluginTranspileError, match=r"^index\.ts:1:1: Top-level 'for await' is not supported"):
        transpiler.transpile("for await (const x of xs) {}", "index.ts")


def test_js_files_keep_js_meaning(load: Any) -> None:
    # Parsed as TypeScript, `a < b > (c)` would be a call with a type argument.
    plugin = load("const a = 1, b = 2, c = 0\nexport const r = a < b > (c)", "index.js")
    assert plugin.eval("__module.exports.r") is True


def test_transform_edge_cases(load: Any) -> None:
    plugin = load(
        """
        'use strict'
        const base = (n) => class { size() { let s = 0; for (let i = 0; i < n; i++) s++; return s } }
        export class Sized extends base(4) {}
        export function f(x) {
            if (x) label: for (let i = 0; ; i++) { if (i > 2) break label }
            return [x?.y.then, x?.y?.then]
        }
        """,
        "index.js",
    )
    name = plugin.code.split("_ls = ")[0].split()[-1]
    assert plugin.code.startswith("'use strict';\n")  # the directive stays first
    assert plugin.code.count(f"{name}_ls()") == 2  # the class expression in `extends` is guarded too
    assert "x?.y.then" in plugin.code  # an optional chain is not broken up
    assert plugin.eval("[new __module.exports.Sized().size(), __module.exports.f(null)]") == [4, [None, None]]


def test_compiler_out_of_memory_is_a_transpile_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transpile_module, "COMPILER_MEMORY_LIMIT", 24 << 20)
    small = Transpiler()
    try:
        with pytest.raises(PluginTranspileError, match=r"^big\.ts: TypeScript compiler ran out of memory"):
            small.transpile(PLUGIN_TS.replace("export ", "") * 400, "big.ts")
        assert small.transpile("export const ok: boolean = true", "after.ts")  # a new isolate
    finally:
        small.close()


def test_guards_are_bound_once_under_an_unguessable_name(transpiler: Transpiler) -> None:
    code = transpiler.transpile("export async function f() { while (true) { await g() } }", "index.ts")
    name = transpiler.guards_name
    assert name.startswith("__pluginGuards_") and len(name) == len("__pluginGuards_") + 16
    assert Transpiler().guards_name != name
    bindings = (
        f"const {name}_ls = {name}.loopStart, {name}_lc = {name}.loopCheck, {name}_ag = {name}.asyncGuard;"
    )
    assert code.count(bindings) == 1
    assert code.index('"use strict"') < code.index(bindings) < code.index("function f")
    assert f'await {name}_ag(g(), "g")' in code


def test_cache_returns_the_same_result_without_compiling(transpiler: Transpiler) -> None:
    source = "export function cached() { for (;;) { break } }"
    first = transpiler.transpile(source, "index.ts")
    start = time.perf_counter()
    again = transpiler.transpile(source, "index.ts")
    hit_seconds = time.perf_counter() - start
    assert again is first
    cached = transpiler.cached(source, "index.ts")
    assert cached is not None and cached.code is first
    assert transpiler.cached(source, "other.ts") is None
    assert hit_seconds < 0.005


async def test_transpile_async_from_the_event_loop(transpiler: Transpiler) -> None:
    code = await transpiler.transpile_async("export const answer: number = 42", "async.ts")
    assert "exports.answer = 42" in code
    assert await transpiler.transpile_async("export const answer: number = 42", "async.ts") is code


# --- loop guard ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "column"),
    [
        ("while (true) {}", 4),
        ("for (;;) {}", 4),
        ("do {} while (true)", 4),
        ("for (;;) x++", 4),
        ("for (const i of endless()) {}", 4),
        ("for (const k in { a: 1 }) { for (;;) {} }", 32),
    ],
)
def test_endless_loop_stops_after_task_timeout(load: Any, body: str, column: int) -> None:
    plugin = load(
        "const endless = () => ({ [Symbol.iterator]: () => ({ next: () => ({ done: false, value: 1 }) }) })\n"
        f"export function f() {{ let x = 0\n    {body}\n}}\n"
    )
    start = time.perf_counter()
    result = plugin.call_sync("__module.exports.f()")
    elapsed = time.perf_counter() - start
    assert result == {"error": loop_message(3, column)}
    assert TIMEOUT_MS / 1000 <= elapsed < TIMEOUT_MS / 1000 + SLACK_SECONDS
    assert plugin.still_usable()


def test_loop_in_a_microtask_after_await_is_stopped(load: Any) -> None:
    # V8's own termination cannot stop this one (see reference/js-engines-measured.md).
    plugin = load("export async function f() {\n    await null\n    while (true) {}\n}\n")
    start = time.perf_counter()
    result = plugin.call_async("__module.exports.f()")
    assert time.perf_counter() - start < TIMEOUT_MS / 1000 + SLACK_SECONDS
    assert result["error"] == loop_message(3, 4)
    assert plugin.still_usable()


def test_loop_that_awaits_each_iteration_is_stopped_on_time(load: Any) -> None:
    # Slow iterations: the clock is read after every await, not only every 1024 iterations.
    plugin = load(
        "const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))\n"
        "export async function f() { let n = 0; while (true) { await sleep(30); n++ } }\n"
    )
    start = time.perf_counter()
    result = plugin.call_async("__module.exports.f()")
    assert time.perf_counter() - start < TIMEOUT_MS / 1000 + SLACK_SECONDS
    assert result["error"] == loop_message(2, 39)


def test_singular_second_in_the_message(load: Any) -> None:
    plugin = load("export function f() {\n  while (1) {}\n}", timeout_ms=1000)
    assert plugin.call_sync("__module.exports.f()") == {"error": loop_message(2, 2, "1 second")}


def test_replacing_date_now_or_timers_does_not_disarm_the_guards(load: Any) -> None:
    plugin = load(
        "export async function f() {\n"
        "  Date.now = () => 0; globalThis.setTimeout = () => 0\n"
        "  await null\n"
        "  for (;;) {}\n"
        "}\n"
        "export async function g() { await new Promise(() => {}) }\n"
    )
    assert plugin.call_async("__module.exports.f()")["error"] == loop_message(4, 2)
    assert plugin.call_async("__module.exports.g()")["error"] == PROMISE_MESSAGE


def test_guarded_loops_keep_their_meaning(load: Any) -> None:
    plugin = load(
        """
        export function f() {
            const out: string[] = []
            outer: for (let i = 0; i < 3; i++) {
                inner: for (let j = 0; j < 3; j++) {
                    if (j === 1) continue outer
                    if (i === 2) break outer
                    out.push(`${i}${j}`)
                }
            }
            let n = 0
            while (n < 5) n++
            do n += 10; while (n < 30)
            for (const k in { a: 1, b: 2 }) out.push(k)
            for (const v of [7, 8]) if (v > 7) out.push(String(v))
            const closures = []
            for (let i = 0; i < 3; i++) closures.push(() => i)
            out.push(closures.map((c) => c()).join(""), String(n))
            label: { out.push("block"); break label }
            return out
        }
        """
    )
    assert plugin.eval("__module.exports.f()") == ["00", "10", "a", "b", "8", "012", "35", "block"]


def test_guarded_loop_cost(load: Any) -> None:
    body = "let s = 0; for (let i = 0; i < 1e7; i++) { s += i % 7 } return s"
    # a timeout far above the loop's run time, so a busy machine measures the guard, not trips it
    plugin = load(f"export function guarded() {{ {body} }}", timeout_ms=30_000)
    plugin.racer.eval(f"globalThis.plain = function () {{ {body} }}")

    def best_of(expression: str) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            plugin.racer.eval(expression)
            times.append(time.perf_counter() - start)
        return min(times)

    guarded, plain = best_of("__module.exports.guarded()"), best_of("plain()")
    print(f"\n1e7 iterations: guarded {guarded * 1000:.1f} ms, plain {plain * 1000:.1f} ms")
    assert guarded - plain < 0.2


# --- await guard ---------------------------------------------------------------------------------


def test_await_on_a_promise_that_never_settles_times_out(load: Any) -> None:
    plugin = load("export async function f(meta) {\n  await meta.storage.get(new Promise(() => {}))\n}\n")
    start = time.perf_counter()
    result = plugin.call_async("__module.exports.f({ storage: { get: (p) => p } })")
    elapsed = time.perf_counter() - start
    assert result == {"error": PROMISE_MESSAGE, "name": "TimeoutError", "caller": "meta.storage.get"}
    assert TIMEOUT_MS / 1000 <= elapsed < TIMEOUT_MS / 1000 + SLACK_SECONDS
    assert plugin.still_usable()


def test_then_on_a_promise_that_never_settles_times_out(load: Any) -> None:
    plugin = load("export function f() { return new Promise(() => {}).then((x) => x) }")
    result = plugin.call_async("__module.exports.f()")
    assert result == {"error": PROMISE_MESSAGE, "name": "TimeoutError", "caller": "Promise"}


def test_awaited_values_and_errors_pass_through(load: Any) -> None:
    plugin = load(
        """
        class Thenable { then(ok) { ok("from thenable") } }
        export async function f() {
            const out = [await 1, await null, await Promise.resolve("resolved"), await new Thenable()]
            try { await Promise.reject(new Error("own error")) } catch (e) { out.push(e.message) }
            out.push(await Promise.resolve(5).then((x) => x * 2))
            out.push(String(await undefined?.then((x) => x)))
            return out
        }
        """
    )
    assert plugin.call_async("__module.exports.f()") == {
        "value": [1, None, "resolved", "from thenable", "own error", 10, "undefined"]
    }


def test_many_pending_guards_share_one_timer(load: Any) -> None:
    # 2,000 concurrent awaits settle normally and 50 left pending all time out, on a host timer
    # (counted here) of which at most one is pending at a time.
    timer = (
        "(callback, ms) => { globalThis.__timers = (globalThis.__timers || 0) + 1;"
        " return globalThis.setTimeout(callback, ms) }"
    )
    plugin = load(
        """
        const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
        export async function f() {
            const quick = Array.from({ length: 2000 }, async (_, i) => { await sleep(i % 20 + 1); return i })
            const stuck = Array.from({ length: 50 }, async () => { await new Promise(() => {}) })
            const sum = (await Promise.all(quick)).reduce((a, b) => a + b, 0)
            const failures = await Promise.allSettled(stuck)
            return [sum, failures.filter((r) => r.status === "rejected").length]
        }
        """,
        # 2 s: the 2,000 quick awaits (20 ms at most each) settle well within it on a busy machine
        guards_options=f"{{ timeoutMs: 2000, setTimeout: {timer} }}",
    )
    assert plugin.call_async("__module.exports.f()") == {"value": [1999000, 50]}
    assert 1 <= plugin.eval("__timers") <= 10


# --- timings -------------------------------------------------------------------------------------


def test_transpile_timings() -> None:
    """Compiler load, then one plugin cold (first compile in the isolate) and warm."""
    fresh = Transpiler()
    try:
        start = time.perf_counter()
        fresh.transpile(PLUGIN_TS, "first.ts")
        cold = time.perf_counter() - start
        warm = []
        for i in range(10):
            start = time.perf_counter()
            fresh.transpile(PLUGIN_TS + f"\n// {i}", "index.ts")
            warm.append(time.perf_counter() - start)
        load_seconds = fresh.load_seconds
        assert load_seconds is not None
        print(
            f"\ncompiler load {load_seconds * 1000:.0f} ms; plugin ({len(PLUGIN_TS)} chars) cold "
            f"{(cold - load_seconds) * 1000:.1f} ms, warm {min(warm) * 1000:.1f} ms "
            f"(median {sorted(warm)[5] * 1000:.1f} ms)"
        )
        assert load_seconds < 10
        assert min(warm) < 0.1
    finally:
        fresh.close()


def test_isolate_is_usable_after_a_timeout_and_close(load: Any) -> None:
    plugin = load("export function f() { while (true) {} }")
    assert "error" in plugin.call_sync("__module.exports.f()")
    assert plugin.still_usable()
    with pytest.raises(JSEvalException):
        plugin.racer.eval("__module.exports.f()")
    assert plugin.still_usable()
