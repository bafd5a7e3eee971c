"""exportEvents retries (plugins/export.py): a batch whose call was stopped at TASK_TIMEOUT (its
destination hangs) is tried again later like one the plugin asked to retry, not given up."""

from __future__ import annotations

from typing import Any, cast

from plugin_server.plugin_api import RetryError
from plugin_server.plugins.export import ExportBuffer
from plugin_server.plugins.instance import PluginInstance, PluginTimeout
from plugin_server.plugins.meta.metrics import EXPORT_EVENTS_METRICS, PluginMetrics
from plugin_server.services.metrics import PluginLabels

BATCH = [{"event": "e", "properties": {"n": 1}}]


class Failing:
    """exportEvents that raises `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def export_events(self, events: list[Any]) -> None:
        raise self.error


async def outcome_of(error: Exception) -> tuple[list[tuple[dict[str, Any], float]], list[Any]]:
    """The retries scheduled and the errors recorded when exportEvents raises `error`."""
    scheduled: list[tuple[dict[str, Any], float]] = []
    recorded: list[Any] = []

    async def schedule_retry(payload: dict[str, Any], delay: float) -> None:
        scheduled.append((payload, delay))

    async def record_error(error: Exception, **details: Any) -> None:
        recorded.append(error)

    buffer = ExportBuffer(
        cast(PluginInstance, Failing(error)),
        config={},
        metrics=PluginMetrics(EXPORT_EVENTS_METRICS),
        plugin=PluginLabels(1, "exporter", 2),
        schedule_retry=schedule_retry,
        record_error=record_error,
    )
    await buffer.export(BATCH, "batch-1", 0)
    return scheduled, recorded


async def test_an_export_stopped_at_the_timeout_is_retried_like_a_retry_error() -> None:
    retried = ([({"batch": BATCH, "batchId": "batch-1", "retriesPerformedSoFar": 1}, 6.0)], [])
    assert (
        await outcome_of(PluginTimeout("Script execution timed out after running for 2 second(s)")) == retried
    )
    assert await outcome_of(RetryError("the hook is down")) == retried


async def test_another_error_is_recorded_and_not_retried() -> None:
    error = ValueError("bad data")
    assert await outcome_of(error) == ([], [error])
