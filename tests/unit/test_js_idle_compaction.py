"""An isolate that ran no script for IDLE_COMPACT_SECONDS is compacted: what its last batch left is
collected and its free pages given back, so that idle isolates of quiet teams hold little memory."""

from __future__ import annotations

import asyncio

import pytest

from plugin_server.plugins.js import runtime
from tests.js_support import loaded_plugin

GARBAGE = """
exports.processEvent = function (event) {
    const parts = []
    for (let i = 0; i < 20000; i++) parts.push({ i, text: 'x' + i })
    event.properties.count = parts.length
    return event
}
"""


def used_heap(plugin: runtime.JSPlugin) -> int:
    isolate = plugin._isolate
    assert isolate is not None and isolate._racer is not None
    return int(isolate._racer.heap_stats()["used_heap_size"])


async def test_an_idle_isolate_gives_back_what_its_last_batch_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "IDLE_COMPACT_SECONDS", 0.3)
    event = {"event": "e", "distinct_id": "d", "team_id": 2, "uuid": "00000000-0000-0000-0000-000000000001"}
    async with loaded_plugin(GARBAGE) as plugin:
        (outcome,) = await plugin.process_events([{**event, "properties": {}}], frozenset())
        assert isinstance(outcome, dict) and outcome["properties"]["count"] == 20000
        after_batch = used_heap(plugin)
        await asyncio.sleep(1.0)
        compacted = used_heap(plugin)
        assert compacted < after_batch / 2, (after_batch, compacted)
        await asyncio.sleep(1.0)  # compacted once, not again and again: it ran no script since
        assert plugin._isolate is not None and plugin._isolate._idle is None
        (again,) = await plugin.process_events([{**event, "properties": {}}], frozenset())
        assert isinstance(again, dict)
