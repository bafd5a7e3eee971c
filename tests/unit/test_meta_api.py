"""The JavaScript side of the meta API against its declaration (meta/api.py): in a real isolate,
`meta` and the `posthog` global have the declared members and functions, each declared operation
reaches the declared Python method with its arguments shaped as declared, the hand-shaped requests
are the only ones prelude.js writes out, and the JS runtime serves every declared request.
The Python side: tests/integration/test_meta_build.py."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

import httpx

from plugin_server.plugins.js.engine import js_source
from plugin_server.plugins.js.runtime import HostOperations
from plugin_server.plugins.meta.api import (
    HAND_SHAPED,
    HOST_OPERATIONS,
    JS_GLOBALS,
    JS_MEMBERS,
    OPERATIONS,
    Argument,
    Operation,
    namespaces,
)
from plugin_server.plugins.meta.build import declared_namespaces
from plugin_server.plugins.meta.network import resolve_addresses
from tests.js_support import loaded_plugin, process_one

Calls = list[tuple[str, tuple[Any, ...]]]


class Recorder:
    """Provides a namespace of the declared operations whose methods record their calls."""

    def __init__(self, namespace: str, calls: Calls) -> None:
        self._namespace = tuple(namespace.split("."))
        self._calls = calls

    def __getattr__(self, method: str) -> Any:
        [name] = [op.name for op in OPERATIONS if op.python == (*self._namespace, method)]

        async def record(*args: Any) -> str:
            self._calls.append((name, args))
            return f"answer of {name}"

        return record


def recording_meta(calls: Calls) -> dict[str, Any]:
    """A `meta` (as keyword arguments of loaded_plugin) whose declared methods record their calls."""
    paths = {".".join(operation.python[:-1]) for operation in OPERATIONS}
    return declared_namespaces({path: Recorder(path, calls) for path in paths})


def js_target(operation: Operation) -> str:
    """How plugin code names the operation: under `meta`, or a global."""
    return operation.name if operation.name.split(".")[0] in JS_GLOBALS else f"meta.{operation.name}"


def given_in_full(argument: Argument, operation: Operation) -> tuple[str, Any]:
    """(JS argument, what Python gets) for an argument given."""
    if argument.shape == "jsonSerialize":
        return "{jsonSerialize: false}", False
    value = f"{operation.name}/{argument.js}"
    return json.dumps(value), value


def left_out(argument: Argument) -> list[Any]:
    """What Python gets for an argument left undefined (nothing at all for an optional one)."""
    if argument.shape == "optional":
        return []
    return [True] if argument.shape == "jsonSerialize" else [None]


async def test_each_declared_operation_reaches_its_python_method_with_its_arguments_shaped() -> None:
    calls: Calls = []
    lines, expected = [], []
    for operation in OPERATIONS:
        given = [given_in_full(argument, operation) for argument in operation.arguments]
        lines.append(f"answers.push(await {js_target(operation)}({', '.join(js for js, _ in given)}))")
        expected.append((operation.name, tuple(value for _, value in given)))
        first, *rest = operation.arguments
        only_first = given_in_full(first, operation)
        lines.append(f"answers.push(await {js_target(operation)}({only_first[0]}))")
        shaped_rest: list[Any] = []
        for argument in rest:
            tail = left_out(argument)
            if not tail:
                break
            shaped_rest += tail
        expected.append((operation.name, (only_first[1], *shaped_rest)))
    source = (
        "exports.processEvent = async function (event, meta) { const answers = [];\n"
        + "\n".join(lines)
        + "\nevent.properties.answers = answers; return event }"
    )
    async with loaded_plugin(source, **recording_meta(calls)) as plugin:
        properties = (await process_one(plugin, {}))["properties"]
    assert calls == expected
    assert properties["answers"] == [f"answer of {name}" for name, _ in expected]


async def test_meta_and_the_posthog_global_hold_what_is_declared() -> None:
    source = """
        function functions(node, path) {
            return Object.keys(node).flatMap((key) => typeof node[key] === 'function'
                ? [path + key] : functions(node[key], path + key + '.'))
        }
        exports.processEvent = function (event, meta) {
            event.properties.members = Object.keys(meta)
            event.properties.declared = ['cache', 'storage', 'geoip', 'utils']
                .flatMap((name) => functions(meta[name], name + '.'))
            event.properties.posthog = functions(posthog, 'posthog.')
            event.properties.frozen = Object.isFrozen(meta.cache) && Object.isFrozen(meta.utils.cursor)
            return event
        }
    """
    async with loaded_plugin(source) as plugin:
        properties = (await process_one(plugin, {}))["properties"]
    in_meta = [name for name in namespaces() if name not in JS_GLOBALS]
    assert in_meta == ["cache", "storage", "utils", "geoip"]  # what the plugin above walks
    assert set(properties["members"]) == {*JS_MEMBERS, *in_meta}
    posthog_api = {f"posthog.api.{method}" for method in ("get", "post", "put", "delete")}
    assert {*properties["declared"], *properties["posthog"]} == {*HOST_OPERATIONS, *posthog_api}
    assert properties["frozen"] is True


def test_prelude_writes_out_only_the_hand_shaped_requests() -> None:
    written = set(re.findall(r'request\("([^"]+)"', js_source("prelude")))
    assert written == {*HAND_SHAPED, "fetch"}


async def test_the_js_runtime_serves_the_hand_shaped_requests() -> None:
    async with httpx.AsyncClient() as http:
        operations = HostOperations(SimpleNamespace(), http, guard=resolve_addresses, timeout=1)
        try:
            assert all(operations.operation(name) is not None for name in HAND_SHAPED)
        finally:
            await operations.close()
