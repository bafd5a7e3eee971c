"""The accepted-events counter of the capture endpoint, recorded once per event loop turn."""

from __future__ import annotations

import asyncio

from plugin_server.services.metrics import get_metrics
from plugin_server.web.capture_endpoint import ReceivedCount


def received() -> float:
    value = get_metrics().registry.get_sample_value(
        "plugin_server_events_received_total", {"source": "capture"}
    )
    return value or 0.0


async def test_the_requests_of_one_loop_turn_are_recorded_together_at_the_next() -> None:
    before = received()
    count = ReceivedCount()
    count.add(3)
    count.add(4)
    assert received() == before  # not yet: at the next turn
    await asyncio.sleep(0)
    assert received() == before + 7
    count.add(1)
    await asyncio.sleep(0)
    assert received() == before + 8
    await asyncio.sleep(0)
    assert received() == before + 8  # each event once
