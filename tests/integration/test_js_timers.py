"""A plugin cannot pin a worker with timers (plugins/js/timers.py), in a real V8 isolate: the number of
pending timers is capped, firings come in paced rounds, and timers that keep the isolate busy are
cleared with the error recorded, while the event loop and the plugin's other calls go on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugin_server.plugins.instance import PluginTimeout
from plugin_server.plugins.js.modules import PluginModules
from plugin_server.plugins.js.runtime import JSPlugin, MemoryLimits
from plugin_server.plugins.js.timers import TimerBudget, TimerLimits
from plugin_server.plugins.js.transpile import get_transpiler
from tests.js_support import process_one

TIMEOUT = 1.0
LIMITS = TimerLimits(max_timers=100, min_interval=0.01, cpu_share=0.1)


class Recorder:
    """The plugin config's recorded errors and log lines."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.logged: list[str] = []
        self.logger = SimpleNamespace(
            **{
                level: self.logged.append
                for level in ("debug", "log", "info", "warn", "error", "plugin_error")
            }
        )

    async def record(self, error: BaseException) -> None:
        self.errors.append(error)


Load = Callable[[str], Awaitable[tuple[JSPlugin, Recorder]]]


@pytest.fixture
async def load() -> AsyncIterator[Load]:
    loaded: list[JSPlugin] = []
    async with httpx.AsyncClient() as http:

        async def load_plugin(source: str) -> tuple[JSPlugin, Recorder]:
            recorder = Recorder()
            transpiler = get_transpiler()
            plugin = await JSPlugin.load(
                PluginModules.single(await transpiler.transpile_async(source, "index.ts"), "index.ts"),
                SimpleNamespace(config={}, attachments={}, logger=recorder.logger, metrics=None),
                plugin_config_id=1,
                timeout=TIMEOUT,
                memory=MemoryLimits(32, 64),
                http=http,
                guards_name=transpiler.guards_name,
                timers=LIMITS,
                record_error=recorder.record,
            )
            loaded.append(plugin)
            await plugin.setup()
            return plugin, recorder

        try:
            yield load_plugin
        finally:
            for plugin in loaded:
                await plugin.teardown()


async def largest_loop_lag(seconds: float) -> float:
    """The longest the event loop was late for a 5 ms sleep, over `seconds`."""
    worst, deadline = 0.0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        await asyncio.sleep(0.005)
        worst = max(worst, time.monotonic() - started - 0.005)
    return worst


async def test_twenty_thousand_zero_delay_intervals_are_capped_paced_and_recorded(load: Load) -> None:
    plugin, recorder = await load(
        """
        let ticks = 0
        const made: any = { created: 0, refused: 0, errorName: '' }
        export function setupPlugin() {
            for (let i = 0; i < 20000; i++) {
                try {
                    setInterval(() => { ticks++ }, 0)
                    made.created++
                } catch (error) {
                    made.refused++
                    made.errorName = error.name
                }
            }
        }
        export function processEvent(event) {
            event.properties.made = made
            event.properties.ticks = ticks
            return event
        }
        """
    )
    assert (await process_one(plugin, {}))["properties"]["made"] == {
        "created": 100,
        "refused": 19900,
        "errorName": "RangeError",
    }
    assert [str(error) for error in recorder.errors] == ["the plugin asked for more than 100 timers"]
    before = (await process_one(plugin, {}))["properties"]["ticks"]
    started = time.monotonic()
    assert await largest_loop_lag(1.0) < 0.1  # the worker's event loop keeps answering
    answered = time.monotonic()
    after = (await process_one(plugin, {}))["properties"]["ticks"]
    assert time.monotonic() - answered < 0.5  # and so do the plugin's calls
    rounds = (after - before) / 100
    assert 0 < rounds <= (time.monotonic() - started) / LIMITS.min_interval + 2  # at most one round per 10 ms


async def test_a_cleared_timer_frees_its_place(load: Load) -> None:
    plugin, _ = await load(
        """
        export function processEvent(event) {
            const ids = []
            for (let i = 0; i < 100; i++) ids.push(setTimeout(() => {}, 60000))
            let refused = false
            try { setTimeout(() => {}, 1) } catch (error) { refused = true }
            clearTimeout(ids[0])
            const again = setTimeout(() => {}, 1)
            ids.slice(1).forEach((id) => clearTimeout(id))
            clearTimeout(again)
            event.properties.result = { refused, again: typeof again }
            return event
        }
        """
    )
    assert (await process_one(plugin, {}))["properties"]["result"] == {"refused": True, "again": "number"}


async def test_timers_that_keep_the_isolate_busy_are_cleared_and_the_error_recorded(load: Load) -> None:
    plugin, recorder = await load(
        """
        let ticks = 0
        export function setupPlugin() {
            setInterval(() => { ticks++; const start = Date.now(); while (Date.now() - start < 20) {} }, 0)
        }
        export function processEvent(event) { event.properties.ticks = ticks; return event }
        """
    )
    deadline = time.monotonic() + 10
    while not recorder.errors and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [type(error) for error in recorder.errors] == [PluginTimeout]
    assert "timers were cleared" in str(recorder.errors[0])
    first = (await process_one(plugin, {}))["properties"]["ticks"]
    await asyncio.sleep(0.3)
    assert (await process_one(plugin, {}))["properties"]["ticks"] == first  # no timer fires any more


async def test_the_time_of_the_plugins_other_calls_is_not_charged_to_its_timers(load: Load) -> None:
    """Rounds of timers wait while processEvent keeps the isolate busy: that wait is not theirs."""
    plugin, recorder = await load(
        """
        let ticks = 0
        export function setupPlugin() { setInterval(() => { ticks++ }, 0) }
        export function processEvent(event) {
            const start = Date.now()
            while (Date.now() - start < 700) {}
            event.properties.ticks = ticks
            return event
        }
        """
    )
    for _ in range(3):  # 2.1 s of processEvent, more than the timers' whole budget (TASK_TIMEOUT)
        before = (await process_one(plugin, {}))["properties"]["ticks"]
    await asyncio.sleep(0.1)
    assert (await process_one(plugin, {}))["properties"]["ticks"] > before
    assert recorder.errors == []


async def test_a_chain_of_zero_delay_timeouts_is_paced(load: Load) -> None:
    plugin, _ = await load(
        """
        let ticks = 0
        const again = () => { ticks++; setTimeout(again, 0) }
        export function setupPlugin() { setTimeout(again, 0) }
        export function processEvent(event) { event.properties.ticks = ticks; return event }
        """
    )
    before = (await process_one(plugin, {}))["properties"]["ticks"]
    started = time.monotonic()
    await asyncio.sleep(0.5)
    ticks = (await process_one(plugin, {}))["properties"]["ticks"] - before
    assert 0 < ticks <= (time.monotonic() - started) / LIMITS.min_interval + 2


@given(
    spending=st.lists(st.tuples(st.floats(0, 0.05), st.floats(0.001, 1.0)), max_size=200),
    share=st.floats(0.01, 1.0),
)
def test_a_budget_spent_within_its_share_is_never_overdrawn(
    spending: list[tuple[float, float]], share: float
) -> None:
    """Spending at most `share` of the time elapsed since the last charge never overdraws."""
    now = 0.0
    budget = TimerBudget(TIMEOUT, share, now)
    for fraction, elapsed in spending:
        now += elapsed
        assert budget.charge(min(fraction, share) * elapsed, now)


def test_a_budget_overdrawn_by_continuous_spending_refuses_after_its_capacity() -> None:
    budget, now, charges = TimerBudget(TIMEOUT, 0.1, 0.0), 0.0, 0
    while budget.charge(0.02, now + 0.02):
        now, charges = now + 0.02, charges + 1
    # 0.02 s busy per 0.02 s: the debt grows by 0.018 s a step, past 1 s after 56 steps.
    assert charges == 55
