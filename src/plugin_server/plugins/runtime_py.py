"""The Python plugin runtime: a plugin is a Python module with snake_case functions.

    def process_event(event, meta): ...        # or async def
    async def on_event(event, meta): ...
    jobs = {"send": send_job}                   # each called as job(payload, meta)

Each plugin config gets its own module object (its own globals), imported from the plugin's files so
that a multi-file plugin can use relative imports. Python plugins are trusted code installed by the
operator: they run in the worker process. An async call is stopped after TASK_TIMEOUT; a call stuck in
CPU is stopped by the supervisor through the call tracker (see tracking.py).
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import importlib.util
import inspect
import itertools
import os
import re
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from plugin_server.ingestion.types import RawEvent
from plugin_server.plugins.events import checked_result, copy_event
from plugin_server.plugins.instance import (
    EventOutcome,
    LoadRequest,
    PluginError,
    PluginTimeout,
    RuntimeServices,
)
from plugin_server.plugins.models import PluginCode
from plugin_server.plugins.tracking import SETUP_LABEL, CallTracker, job_label, on_event_label
from plugin_server.services.instance_dir import pid_alive

# Python name -> the name PostHog knows the capability by.
FUNCTIONS = {
    "setup_plugin": "setupPlugin",
    "teardown_plugin": "teardownPlugin",
    "process_event": "processEvent",
    "process_event_batch": "processEvent",
    "on_event": "onEvent",
    "export_events": "exportEvents",
}
TASKS = {
    "run_every_minute": "runEveryMinute",
    "run_every_hour": "runEveryHour",
    "run_every_day": "runEveryDay",
}
_module_numbers = itertools.count()
PLUGIN_FILES = Path(tempfile.gettempdir()) / "plugin-server-python"  # a folder per process in it
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._]+")
_files_folder: Path | None = None


class PythonPlugin:
    """A loaded Python plugin config (implements plugins.instance.PluginInstance)."""

    def __init__(
        self, module: ModuleType, meta: Any, *, plugin_config_id: int, timeout: float, tracker: CallTracker
    ) -> None:
        self.module = module
        self.meta = meta
        self.plugin_config_id = plugin_config_id
        self._timeout = timeout
        self._tracker = tracker
        found = {name for name in (*FUNCTIONS, *TASKS) if callable(getattr(module, name, None))}
        self.methods = frozenset(FUNCTIONS[name] for name in found if name in FUNCTIONS)
        self.scheduled_tasks = tuple(camel for name, camel in TASKS.items() if name in found)
        jobs = getattr(module, "jobs", None)
        self._jobs: dict[str, Callable[..., Any]] = (
            {str(name): job for name, job in jobs.items() if callable(job)} if isinstance(jobs, dict) else {}
        )
        self.jobs = tuple(self._jobs)
        metrics = getattr(module, "metrics", None)
        self.metrics: dict[str, str] = dict(metrics) if isinstance(metrics, dict) else {}

    @classmethod
    def load(
        cls, code: PluginCode, meta: Any, *, plugin_config_id: int, timeout: float, tracker: CallTracker
    ) -> PythonPlugin:
        module = import_plugin_module(code, plugin_config_id)
        return cls(module, meta, plugin_config_id=plugin_config_id, timeout=timeout, tracker=tracker)

    async def setup(self) -> None:
        await self._call_optional("setup_plugin", label=SETUP_LABEL)

    async def teardown(self) -> None:
        try:
            await self._call_optional("teardown_plugin", label="teardownPlugin")
        finally:
            forget_plugin_module(self.module)

    async def process_events(self, events: list[RawEvent], hung: frozenset[str]) -> list[EventOutcome]:
        single = getattr(self.module, "process_event", None)
        batch = getattr(self.module, "process_event_batch", None)
        outcomes: list[EventOutcome] = []
        for event in events:
            uuid = str(event.get("uuid"))
            if uuid in hung:
                outcomes.append(PluginTimeout(_hung_message(self._timeout)))
                continue
            given = copy_event(event)
            try:
                if callable(single):
                    result = await self._call(single, uuid, given)
                else:
                    returned = await self._call(batch, uuid, [given])  # type: ignore[arg-type]
                    result = returned[0] if isinstance(returned, list) and returned else None
                outcomes.append(checked_result(event, result))
            except Exception as error:
                outcomes.append(error)
        return outcomes

    async def on_event(self, event: RawEvent) -> None:
        label = on_event_label(str(event.get("uuid")))
        await self._call_optional("on_event", copy_event(event), label=label)

    async def export_events(self, events: list[RawEvent]) -> None:
        await self._call_optional(
            "export_events", [copy_event(event) for event in events], label="exportEvents"
        )

    async def run_task(self, name: str) -> None:
        python_name = next((key for key, camel in TASKS.items() if camel == name), name)
        await self._call_optional(python_name, label=name)

    async def run_job(self, name: str, payload: Any) -> None:
        job = self._jobs.get(name)
        if job is None:
            raise PluginError(f"this plugin has no job {name!r}")
        await self._call(job, job_label(name), payload)

    async def _call_optional(self, name: str, *args: Any, label: str) -> None:
        function = getattr(self.module, name, None)
        if callable(function):
            await self._call(function, label, *args)

    async def _call(self, function: Callable[..., Any], label: str, *args: Any) -> Any:
        """Call a plugin function with meta last; sync code is tracked, async code also timed out.

        `label` names what runs (an event uuid, or e.g. "setupPlugin") for the supervisor's records."""
        self._tracker.enter(self.plugin_config_id, label)
        try:
            result = function(*args, self.meta)
        finally:
            self._tracker.leave()
        if not inspect.isawaitable(result):
            return result
        try:
            return await asyncio.wait_for(
                self._tracker.track(result, self.plugin_config_id, label), self._timeout
            )
        except TimeoutError:
            raise PluginTimeout(
                f"Script execution timed out after promise waited for {self._timeout:g} second(s)"
            ) from None


async def load_python_plugin(request: LoadRequest, services: RuntimeServices) -> PythonPlugin:
    """The Python runtime's loader (see plugins/runtimes.py)."""
    return PythonPlugin.load(
        request.code,
        request.meta,
        plugin_config_id=request.plugin_config_id,
        timeout=services.settings.TASK_TIMEOUT,
        tracker=services.tracker,
    )


def _hung_message(timeout: float) -> str:
    return (
        f"Plugin ran for more than {timeout:g} second(s) without yielding on this event and its worker was "
        "replaced; the event continued without this plugin's change"
    )


def import_plugin_module(code: PluginCode, plugin_config_id: int) -> ModuleType:
    """Import the plugin's main file as a fresh package, from a folder holding all its files."""
    folder = _materialise(code)
    name = f"_posthog_plugin_{plugin_config_id}_{next(_module_numbers)}"
    main = folder / code.main
    spec = importlib.util.spec_from_file_location(name, main, submodule_search_locations=[str(main.parent)])
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import {code.main}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        forget_plugin_module(module)
        raise
    return module


def forget_plugin_module(module: ModuleType) -> None:
    """Drop a plugin module and its submodules from sys.modules, so a reload imports fresh code."""
    prefix = module.__name__ + "."
    for name in [name for name in sys.modules if name == module.__name__ or name.startswith(prefix)]:
        del sys.modules[name]


def _materialise(code: PluginCode) -> Path:
    """Write the plugin's files, once per distinct content, into a folder named after the plugin in this
    process's folder of plugin files (so a traceback names the plugin and its file)."""
    digest = hashlib.sha256()
    for path in sorted(code.files):
        digest.update(path.encode() + b"\0" + code.files[path] + b"\0")
    name = _UNSAFE_NAME.sub("-", str(code.plugin_json.get("name") or "plugin"))[:60] or "plugin"
    folder = _process_folder() / f"{name}-{digest.hexdigest()[:16]}"
    if not (folder / ".complete").exists():
        for path, contents in code.files.items():
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(contents)
        (folder / ".complete").touch()
    return folder


def _process_folder() -> Path:
    """This process's folder of plugin files, removed when the process exits; those of a process that
    was killed are removed by `remove_stale_plugin_files`."""
    global _files_folder
    if _files_folder is None or _files_folder.name != str(os.getpid()):  # a new process (fork)
        _files_folder = PLUGIN_FILES / str(os.getpid())
        _files_folder.mkdir(parents=True, exist_ok=True)
        atexit.register(shutil.rmtree, _files_folder, ignore_errors=True)
    return _files_folder


def remove_stale_plugin_files() -> None:
    """Remove the plugin files of processes that are gone (killed, so their exit did not clean up)."""
    for folder in PLUGIN_FILES.glob("*"):
        if folder.name.isdigit() and not pid_alive(int(folder.name)):
            shutil.rmtree(folder, ignore_errors=True)


def plugin_traceback(error: BaseException) -> str:
    """The traceback of an error raised by a Python plugin, for its author: only the frames in the
    plugin's own files (named `plugin-name/file.py`) when there are any, else all of them."""
    summary = traceback.TracebackException.from_exception(error)
    own = []
    for frame in summary.stack:
        path = Path(frame.filename)
        if path.is_relative_to(PLUGIN_FILES) and len(path.relative_to(PLUGIN_FILES).parts) > 2:
            _pid, folder, *rest = path.relative_to(PLUGIN_FILES).parts
            shown = "/".join([folder.rsplit("-", 1)[0], *rest])
            own.append(traceback.FrameSummary(shown, frame.lineno, frame.name, line=frame.line))
    if own:
        summary.stack = traceback.StackSummary.from_list(own)
    return "".join(summary.format())
