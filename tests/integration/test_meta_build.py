"""The Python side of the meta API against its declaration (meta/api.py): the `meta` a Python
plugin gets, loaded through the real plugin machinery, has the declared members, and each declared
operation is an async method of the service behind it, taking the declared arguments in order (those
JavaScript may leave out have defaults). The JavaScript side: tests/unit/test_meta_api.py."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import psycopg

from plugin_server.db.teams import CreatedTeam
from plugin_server.plugins.meta.api import (
    HAND_SHAPED,
    LOG_ALIASES,
    LOG_LEVELS,
    METRIC_METHODS,
    OPERATIONS,
    PYTHON_MEMBERS,
    namespaces,
)
from plugin_server.plugins.meta.metrics import PluginMetrics
from plugin_server.plugins.runtime_py import PythonPlugin
from tests.plugin_hosts import RunningPlugins, install_files


def attribute(target: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        target = getattr(target, name)
    return target


async def test_python_meta_has_what_is_declared(
    clean_db: psycopg.Connection[Any], tmp_path: Path, team: CreatedTeam, running: RunningPlugins
) -> None:
    files = {
        "plugin.json": json.dumps({"name": "meta test", "main": "index.py"}),
        "index.py": "def process_event(event, meta):\n    return event\n",
    }
    _, config_id = install_files(clean_db, tmp_path, team, files, {})
    await running.plugins.registry.reload()
    vm = running.plugins.registry.get(config_id)
    assert vm is not None
    instance = await vm.get()
    assert isinstance(instance, PythonPlugin)
    meta = instance.meta

    assert set(vars(meta)) == {*PYTHON_MEMBERS, *namespaces()}
    for operation in OPERATIONS:
        method = attribute(meta, operation.python)
        assert inspect.iscoroutinefunction(method), operation.name
        parameters = list(inspect.signature(method).parameters.values())
        declared = [argument.python for argument in operation.arguments]
        assert [parameter.name for parameter in parameters[: len(declared)]] == declared, operation.name
        assert all(
            parameter.default is not inspect.Parameter.empty for parameter in parameters[len(declared) :]
        )
        for argument, parameter in zip(operation.arguments, parameters, strict=False):
            if argument.shape == "optional":
                assert parameter.default is not inspect.Parameter.empty, operation.name
    for path in HAND_SHAPED.values():
        attribute(meta, path)
    assert all(callable(getattr(meta.logger, level)) for level in LOG_LEVELS)
    assert set(LOG_ALIASES.values()) <= set(LOG_LEVELS)
    assert meta.metrics is not None
    for kind, method in METRIC_METHODS.items():
        getattr(PluginMetrics({"m": kind})["m"], method)(1)
