"""The Python plugin runtime on its own: loading, calling conventions, per-event outcomes, timeouts."""

from __future__ import annotations

import asyncio
import textwrap
import time
from types import SimpleNamespace
from typing import Any

import pytest

from plugin_server.plugins.instance import PluginError, PluginTimeout, capabilities
from plugin_server.plugins.models import PluginCode
from plugin_server.plugins.runtime_py import PythonPlugin
from plugin_server.plugins.tracking import CallTracker, SharedCallState

UUID = "017d6a76-9b0e-7000-8000-000000000001"


def event(**changes: Any) -> dict[str, Any]:
    return {
        "event": "$pageview",
        "distinct_id": "d",
        "team_id": 2,
        "uuid": UUID,
        "properties": {"a": 1},
        **changes,
    }


def load(
    source: str,
    *,
    timeout: float = 2.0,
    files: dict[str, str] | None = None,
    tracker: CallTracker | None = None,
) -> PythonPlugin:
    all_files = {"index.py": textwrap.dedent(source), **(files or {})}
    code = PluginCode("python", "index.py", {path: text.encode() for path, text in all_files.items()})
    meta = SimpleNamespace(config={"greeting": "hi"}, global_={})
    return PythonPlugin.load(
        code, meta, plugin_config_id=7, timeout=timeout, tracker=tracker or CallTracker(None)
    )


async def test_sync_and_async_process_event_get_a_copy_and_meta() -> None:
    plugin = load(
        """
        def process_event(event, meta):
            event["properties"]["greeting"] = meta.config["greeting"]
            return event
        """
    )
    original = event()
    [result] = await plugin.process_events([original], frozenset())
    assert isinstance(result, dict) and result["properties"] == {"a": 1, "greeting": "hi"}
    assert original["properties"] == {"a": 1}

    plugin = load(
        """
        import asyncio
        async def process_event(event, meta):
            await asyncio.sleep(0)
            event["properties"]["async"] = True
            return event
        """
    )
    [result] = await plugin.process_events([event()], frozenset())
    assert isinstance(result, dict) and result["properties"]["async"] is True


async def test_each_event_keeps_its_own_outcome() -> None:
    plugin = load(
        """
        def process_event(event, meta):
            n = event["properties"]["n"]
            if n == 1:
                return None
            if n == 2:
                event["properties"]["half-done"] = True
                raise ValueError("boom")
            if n == 3:
                return "garbage"
            if n == 4:
                event["team_id"] = 3
                return event
            if n == 5:
                event["properties"]["bad"] = {1, 2}
                return event
            if n == 6:
                del event["event"]
                return event
            return event
        """
    )
    events = [event(properties={"n": n}) for n in range(7)]
    outcomes = await plugin.process_events(events, frozenset())
    assert outcomes[0] == events[0]
    assert outcomes[1] is None
    assert isinstance(outcomes[2], ValueError)
    assert events[2]["properties"] == {"n": 2}
    for index, message in ((3, "not an event"), (4, "team_id"), (5, "not JSON"), (6, "without a name")):
        outcome = outcomes[index]
        assert isinstance(outcome, PluginError) and message in str(outcome), (index, outcome)


async def test_process_event_batch_only_plugin() -> None:
    plugin = load(
        """
        def process_event_batch(events, meta):
            return [dict(e, event=e["event"].upper()) for e in events]
        """
    )
    [result] = await plugin.process_events([event()], frozenset())
    assert isinstance(result, dict) and result["event"] == "$PAGEVIEW"
    assert "processEvent" in plugin.methods


async def test_async_call_that_never_finishes_times_out() -> None:
    plugin = load(
        """
        import asyncio
        async def process_event(event, meta):
            await asyncio.Event().wait()
        """,
        timeout=0.3,
    )
    started = time.monotonic()
    [outcome] = await plugin.process_events([event()], frozenset())
    assert isinstance(outcome, PluginTimeout)
    assert "timed out after promise waited for 0.3 second(s)" in str(outcome)
    assert time.monotonic() - started < 1.5


async def test_events_marked_hung_are_not_given_to_the_plugin() -> None:
    plugin = load(
        """
        def process_event(event, meta):
            while True:
                pass
        """
    )
    [outcome] = await plugin.process_events([event()], frozenset({UUID}))
    assert isinstance(outcome, PluginTimeout)


async def test_tracker_marks_sync_and_async_steps() -> None:
    state = SharedCallState()
    seen: list[Any] = []
    plugin = load(
        """
        import asyncio
        async def process_event(event, meta):
            meta.global_["probe"]()
            await asyncio.sleep(0.05)
            meta.global_["probe"]()
            return event
        """,
        tracker=CallTracker(state),
    )
    plugin.meta.global_["probe"] = lambda: seen.append(state.current())
    task = asyncio.create_task(plugin.process_events([event()], frozenset()))
    await asyncio.sleep(0.02)
    between_steps = state.current()
    await task
    assert seen == [(7, UUID), (7, UUID)]
    assert between_steps is None
    assert state.current() is None


async def test_capabilities_tasks_jobs_and_relative_imports() -> None:
    plugin = load(
        """
        from .helpers import shout

        def setup_plugin(meta):
            meta.global_["ready"] = shout("yes")

        def on_event(event, meta):
            pass

        def run_every_minute(meta):
            meta.global_["ran"] = True

        async def send(payload, meta):
            meta.global_["job"] = payload

        jobs = {"send": send}
        metrics = {"count": "sum"}
        unknown_export = 1
        """,
        files={"helpers.py": "def shout(text):\n    return text.upper()\n"},
    )
    await plugin.setup()
    assert plugin.meta.global_["ready"] == "YES"
    assert capabilities(plugin) == {
        "methods": ["setupPlugin", "onEvent"],
        "scheduled_tasks": ["runEveryMinute"],
        "jobs": ["send"],
    }
    assert plugin.metrics == {"count": "sum"}
    await plugin.run_task("runEveryMinute")
    await plugin.run_job("send", {"x": 1})
    assert plugin.meta.global_["ran"] is True and plugin.meta.global_["job"] == {"x": 1}
    with pytest.raises(PluginError):
        await plugin.run_job("nope", {})
    await plugin.teardown()


async def test_two_configs_of_one_plugin_have_separate_globals() -> None:
    source = """
        counter = 0
        def process_event(event, meta):
            global counter
            counter += 1
            event["properties"]["count"] = counter
            return event
        """
    first, second = load(source), load(source)
    for _ in range(2):
        await first.process_events([event()], frozenset())
    [result] = await second.process_events([event()], frozenset())
    assert isinstance(result, dict) and result["properties"]["count"] == 1
