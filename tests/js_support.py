"""The JavaScript runtime without the rest of the server, for unit tests: an isolate set up with the
runtime's own setup script, and a JSPlugin whose meta is a plain namespace (no database)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
from py_mini_racer import MiniRacer

from plugin_server.plugins.js.engine import new_racer
from plugin_server.plugins.js.modules import PluginModules
from plugin_server.plugins.js.runtime import MIB, JSPlugin, MemoryLimits, setup_script
from plugin_server.plugins.meta.network import ConnectGuard, resolve_addresses

SEED = "5e" * 32


@contextlib.contextmanager
def set_up_racer(module_body: str, *, seed: str = SEED) -> Iterator[MiniRacer]:
    """An isolate after the runtime's setup script (with the host's random `seed`), in which the
    prelude's `load` has run a module function of `module_body` (it sees `exports` and `require`)."""
    racer = new_racer()
    try:
        options = {"timeoutMs": 1000, "config": {}, "attachments": {}, "randomSeed": seed}
        racer.eval(setup_script("__entry", options, 64 * MIB))
        racer.eval(
            f'__entry.define("index.js", [], {{}}, function (exports, require) {{ {module_body} }}, null)'
        )
        racer.eval('__entry.load(1, "index.js")')
        yield racer
    finally:
        racer.close()


def literal_requires(source: str) -> tuple[str, ...]:
    """The module names `source` requires with a literal (what the transpiler reads from its output)."""
    return tuple(dict.fromkeys(re.findall(r"""\brequire\(\s*['"]([^'"]+)['"]\s*\)""", source)))


@contextlib.asynccontextmanager
async def loaded_plugin(
    source: str | PluginModules,
    *,
    guards_name: str = "__guards",
    timeout: float = 1.0,
    guard: ConnectGuard = resolve_addresses,
    heap_mb: float = 32,
    **meta: Any,
) -> AsyncIterator[JSPlugin]:
    """A JSPlugin of `source` (run as given) or of modules transpiled with guards named `guards_name`,
    with a heap limit of `heap_mb`, empty config and attachments unless given in `meta`, torn down
    afterwards."""
    modules = (
        PluginModules.single(source, requires=literal_requires(source)) if isinstance(source, str) else source
    )
    async with httpx.AsyncClient() as http:
        plugin = await JSPlugin.load(
            modules,
            SimpleNamespace(**{"config": {}, "attachments": {}, **meta}),
            plugin_config_id=1,
            timeout=timeout,
            memory=MemoryLimits(heap_mb, 64),
            http=http,
            guards_name=guards_name,
            guard=guard,
        )
        try:
            yield plugin
        finally:
            await plugin.teardown()


async def process_one(
    plugin: JSPlugin, properties: dict[str, Any], *, event: str = "e", distinct_id: str = "d"
) -> dict[str, Any]:
    """The event (of team 2) that the plugin's processEvent makes of one with these properties."""
    given = {
        "event": event,
        "distinct_id": distinct_id,
        "team_id": 2,
        "uuid": "00000000-0000-0000-0000-000000000001",
        "properties": properties,
    }
    (outcome,) = await plugin.process_events([given], frozenset())
    assert isinstance(outcome, dict), outcome
    return outcome


async def body_outcome(
    body: str, *, head: str = "", config: dict[str, Any] | None = None, timeout: float = 1.0
) -> Any:
    """`properties.out` after an async processEvent whose `body` (which sees `config` and what the
    module's `head` declares) sets `out`."""
    source = (
        f"{head}\nexports.processEvent = async function (event, {{ config }}) {{"
        f" let out; {body}; event.properties.out = out; return event }}"
    )
    async with loaded_plugin(source, config=config or {}, timeout=timeout) as plugin:
        return (await process_one(plugin, {}))["properties"]["out"]
