"""The exportEvents upgrade: buffer events per plugin config, export them in batches, retry later.

Events a plugin with exportEvents would see through onEvent are buffered (minus the names in
`exportEventsToIgnore`) and handed to exportEvents when the buffer holds `exportEventsBufferBytes`
or is `exportEventsBufferSeconds` old. A RetryError schedules the same batch again as a durable job,
after 6, 12, 24 ... seconds, at most MAX_EXPORT_RETRIES times; then the events count as undelivered.
A call stopped at TASK_TIMEOUT is retried the same way: its destination hangs, and the plugin had no
chance to say RetryError (its own request shares the call's deadline).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from plugin_server.ingestion.types import RawEvent
from plugin_server.plugin_api import RetryError
from plugin_server.plugins.instance import PluginInstance, PluginTimeout
from plugin_server.plugins.meta.metrics import PluginMetrics
from plugin_server.services.metrics import EXPORT_EVENTS, PluginLabels, get_metrics

log = logging.getLogger(__name__)

EXPORT_RETRY_JOB = "exportEventsWithRetry"
MAX_EXPORT_RETRIES = 15
DEFAULT_BUFFER_BYTES = 1024 * 1024
MAX_BUFFER_BYTES = 100 * 1024 * 1024
DEFAULT_BUFFER_SECONDS = 10.0
MAX_BUFFER_SECONDS = 600.0

ScheduleRetry = Callable[[dict[str, Any], float], Awaitable[None]]


def _clamped(value: Any, default: float, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return min(max(number, low), high)


def retry_delay_seconds(retries_so_far: int) -> float:
    return float(2 ** (retries_so_far + 1) * 3)


class ExportBuffer:
    """One plugin config's export buffer (kept on its PluginVM, flushed on teardown)."""

    def __init__(
        self,
        instance: PluginInstance,
        *,
        config: dict[str, Any],
        metrics: PluginMetrics,
        plugin: PluginLabels,
        schedule_retry: ScheduleRetry,
        record_error: Callable[..., Awaitable[None]],  # PluginVM.record_error
    ) -> None:
        self._instance = instance
        self._metrics = metrics
        self._plugin = plugin
        self._schedule_retry = schedule_retry
        self._record_error = record_error
        self.max_bytes = _clamped(
            config.get("exportEventsBufferBytes"), DEFAULT_BUFFER_BYTES, 1, MAX_BUFFER_BYTES
        )
        self.max_seconds = _clamped(
            config.get("exportEventsBufferSeconds"), DEFAULT_BUFFER_SECONDS, 1, MAX_BUFFER_SECONDS
        )
        ignored = str(config.get("exportEventsToIgnore") or "")
        self.ignored = frozenset(name.strip() for name in ignored.split(",") if name.strip())
        self._events: list[RawEvent] = []
        self._bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    def add(self, event: RawEvent) -> None:
        if event.get("event") in self.ignored:
            return
        size = len(orjson.dumps(event))
        if self._events and self._bytes + size > self.max_bytes:
            self._flush_in_background()
        self._events.append(event)
        self._bytes += size
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_seconds, self._flush_in_background)

    async def flush(self) -> None:
        """Export what is buffered now, and wait for every flush under way."""
        self._flush_in_background()
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    def _flush_in_background(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._events, self._bytes = self._events, [], 0
        if batch:
            task = asyncio.create_task(self.export(batch, str(uuid.uuid4()), 0))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def export(self, batch: list[RawEvent], batch_id: str, retries_so_far: int) -> None:
        """exportEvents with the original's metrics; a RetryError schedules another try."""
        if retries_so_far == 0:
            self._metrics["events_seen"].increment(len(batch))
        try:
            with get_metrics().plugin_call(self._plugin, EXPORT_EVENTS):
                await self._instance.export_events(batch)
        except (RetryError, PluginTimeout) as error:
            self._metrics["retry_errors"].increment(1)
            if retries_so_far + 1 >= MAX_EXPORT_RETRIES:
                get_metrics().export_retry(enqueued=False)
                self._metrics["undelivered_events"].increment(len(batch))
                outcome = f"batch {batch_id} ({len(batch)} events) dropped after {retries_so_far + 1} tries"
                await self._record_error(error, function="exportEvents", outcome=outcome)
                return
            payload = {"batch": batch, "batchId": batch_id, "retriesPerformedSoFar": retries_so_far + 1}
            delay = retry_delay_seconds(retries_so_far)
            await self._schedule_retry(payload, delay)
            get_metrics().export_retry(enqueued=True)
            log.info(
                "plugin %s asked to retry exportEvents (%s): batch %s (%d events) retried in %.0fs (try %d of %d)",
                self._plugin.plugin_name,
                error,
                batch_id,
                len(batch),
                delay,
                retries_so_far + 2,
                MAX_EXPORT_RETRIES,
            )
        except Exception as error:
            self._metrics["other_errors"].increment(1)
            self._metrics["undelivered_events"].increment(len(batch))
            outcome = f"{len(batch)} events not exported, not retried (a plugin raises RetryError to retry)"
            await self._record_error(error, function="exportEvents", outcome=outcome)
        else:
            self._metrics["events_delivered_successfully"].increment(len(batch))
