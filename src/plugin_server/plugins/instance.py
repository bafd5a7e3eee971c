"""What every plugin runtime (Python, JavaScript) provides for one loaded plugin config, and what
its loader is given (runtimes.py has the table of runtimes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from plugin_server.config import Settings
from plugin_server.ingestion.types import RawEvent
from plugin_server.plugins.meta.network import ConnectGuard
from plugin_server.plugins.models import PluginCode
from plugin_server.plugins.tracking import CallTracker

# Method names as PostHog stores them in posthog_plugin.capabilities (the JS names, for every runtime).
METHODS = ("setupPlugin", "teardownPlugin", "processEvent", "onEvent", "exportEvents")

# What processEvent made of one event: the new event, None (drop it), or the error it raised.
EventOutcome = RawEvent | None | BaseException


class PluginError(Exception):
    """A plugin did something the server refuses (bad return value, changed team_id, ran too long)."""


class PluginTimeout(PluginError):
    """A plugin call ran longer than TASK_TIMEOUT."""


class PluginInstance(Protocol):
    """One plugin config's code, loaded and set up, ready to be called."""

    plugin_config_id: int
    methods: frozenset[str]
    scheduled_tasks: tuple[str, ...]
    jobs: tuple[str, ...]
    metrics: dict[str, str]

    async def setup(self) -> None: ...

    async def teardown(self) -> None: ...

    async def process_events(self, events: list[RawEvent], hung: frozenset[str]) -> list[EventOutcome]:
        """processEvent over a batch with per-event results. Events whose uuid is in `hung` are not
        given to the plugin (it was stopped on them before); they come back as PluginTimeout."""
        ...

    async def on_event(self, event: RawEvent) -> None: ...

    async def export_events(self, events: list[RawEvent]) -> None: ...

    async def run_task(self, name: str) -> None: ...

    async def run_job(self, name: str, payload: Any) -> None: ...


def capabilities(instance: PluginInstance) -> dict[str, list[str]]:
    """The posthog_plugin.capabilities value for a loaded plugin."""
    return {
        "methods": [name for name in METHODS if name in instance.methods],
        "scheduled_tasks": list(instance.scheduled_tasks),
        "jobs": list(instance.jobs),
    }


# Records an error of a plugin config that no call raises.
RecordError = Callable[[BaseException], Awaitable[None]]


@dataclass(frozen=True)
class RuntimeServices:
    """What the runtimes share in a worker."""

    settings: Settings  # TASK_TIMEOUT and the JS_* limits
    http: httpx.AsyncClient  # plugins' HTTP (fetch), through the egress policy
    connect_guard: ConnectGuard  # where JS plugins' own connections (pg, snowflake-sdk...) may go
    tracker: CallTracker  # what a Python plugin runs, for the supervisor


@dataclass(frozen=True)
class LoadRequest:
    """One plugin config to load: its code and `meta`."""

    code: PluginCode
    meta: Any
    plugin_config_id: int
    record_error: RecordError  # errors no call raises (a JS timer's)


# A runtime's loader: the instance of a plugin config's code, not set up yet (`setup()` is next).
Loader = Callable[[LoadRequest, RuntimeServices], Awaitable[PluginInstance]]
# What a runtime can do with a plugin's code ahead of its first load (compile it into a cache), so
# that loading it later is quick; a failure here is found again, and reported, by the load.
Preparer = Callable[[PluginCode], Awaitable[None]]


@dataclass(frozen=True)
class Runtime:
    load: Loader
    prepare: Preparer


async def nothing_to_prepare(code: PluginCode) -> None:
    """A runtime's `prepare` when loading has nothing to do ahead."""
