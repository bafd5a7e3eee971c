"""What every plugin runtime (Python, JavaScript) provides for one loaded plugin config."""

from __future__ import annotations

from typing import Any, Protocol

from plugin_server.ingestion.types import RawEvent

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
