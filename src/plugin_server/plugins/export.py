"""The exportEvents upgrade: buffer events per plugin config, export them in batches, retry later.

Events a plugin with exportEvents would see through onEvent are buffered (minus the names in
`exportEventsToIgnore`) and handed to exportEvents when the buffer holds `exportEventsBufferBytes`
or is `exportEventsBufferSeconds` old. A RetryError schedules the same batch again as a durable job,
after 6, 12, 24 ... seconds, at most MAX_EXPORT_RETRIES times; then the events count as undelivered.
A call stopped at TASK_TIMEOUT is retried the same way: its destination hangs, and the plugin had no
chance to say RetryError (its own request shares the call's deadline).

Durable: a stored batch's events are also written as a waiting job (that retry job, no tries yet,
due once they can no longer be in memory) before the batch is acknowledged, and the job is taken back
once the buffer's export of them ended (delivered, retried as a job of its own, or given up). A worker
killed meanwhile leaves the job, and a job runner exports them when it is due: at least once (a kill
between an export and the taking back exports it twice).

Bounded: at most MAX_EXPORTS_IN_FLIGHT exports of a buffer run at once. A batch flushed while they
all still run (the destination is slow or hangs) is not kept in memory: its waiting jobs export it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson

from plugin_server.ingestion.types import RawEvent
from plugin_server.jobs.queue import JobQueue, PluginJob
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
MAX_EXPORTS_IN_FLIGHT = 2  # per plugin config and worker

ScheduleRetry = Callable[[dict[str, Any], float], Awaitable[None]]


class HeldExports(Protocol):
    """Where buffered events wait durably: jobs of the config, taken back once exported."""

    async def hold(self, payload: dict[str, Any], delay: float) -> int: ...

    async def take_back(self, ids: Sequence[int]) -> None: ...


@dataclass(frozen=True)
class QueuedExports:
    """HeldExports as retry jobs of one plugin config on the job queue."""

    queue: JobQueue
    plugin_config_id: int
    team_id: int

    async def hold(self, payload: dict[str, Any], delay: float) -> int:
        run_at = datetime.now(UTC) + timedelta(seconds=delay)
        return await self.queue.hold(
            PluginJob(EXPORT_RETRY_JOB, payload, self.plugin_config_id, self.team_id, run_at)
        )

    async def take_back(self, ids: Sequence[int]) -> None:
        await self.queue.take_back(ids)


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
        held: HeldExports | None = None,
        call_seconds: float = 30.0,  # how long an exportEvents call may take (TASK_TIMEOUT)
    ) -> None:
        self._instance = instance
        self._metrics = metrics
        self._plugin = plugin
        self._schedule_retry = schedule_retry
        self._record_error = record_error
        self._held = held
        self.max_bytes = _clamped(
            config.get("exportEventsBufferBytes"), DEFAULT_BUFFER_BYTES, 1, MAX_BUFFER_BYTES
        )
        self.max_seconds = _clamped(
            config.get("exportEventsBufferSeconds"), DEFAULT_BUFFER_SECONDS, 1, MAX_BUFFER_SECONDS
        )
        # A held job comes due once its events cannot still be buffered or in an export's call.
        self.hold_seconds = self.max_seconds + 2 * call_seconds + 30
        ignored = str(config.get("exportEventsToIgnore") or "")
        self.ignored = frozenset(name.strip() for name in ignored.split(",") if name.strip())
        self._events: list[RawEvent] = []
        self._held_ids: list[int] = []
        self._bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def add(self, events: Sequence[RawEvent]) -> None:
        """Buffer a stored batch's events, held as a job first (a database error raises: the batch
        is not acknowledged, and is handled again)."""
        kept = [event for event in events if event.get("event") not in self.ignored]
        if not kept:
            return
        encoded = orjson.dumps(kept)
        size = len(encoded)
        # The held job's payload takes the events as they were just encoded, not serialised again.
        batch = orjson.Fragment(encoded)
        payload = {"batch": batch, "batchId": str(uuid.uuid4()), "retriesPerformedSoFar": 0}
        held = None if self._held is None else await self._held.hold(payload, self.hold_seconds)
        if self._events and self._bytes + size > self.max_bytes:
            self._flush_in_background()
        self._events.extend(kept)
        self._bytes += size
        if held is not None:
            self._held_ids.append(held)
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
        batch, held, self._events, self._held_ids, self._bytes = self._events, self._held_ids, [], [], 0
        if not batch:
            return
        if held and len(self._flushes) >= MAX_EXPORTS_IN_FLIGHT:
            log.info(
                "plugin %s: %d exports still running; %d events left to their waiting jobs (due in %.0fs)",
                self._plugin.plugin_name,
                len(self._flushes),
                len(batch),
                self.hold_seconds,
            )
            return
        task = asyncio.create_task(self._export_held(batch, held))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _export_held(self, batch: list[RawEvent], held: list[int]) -> None:
        """Export a flushed batch, then take its waiting jobs back: if either fails for the database,
        the jobs export the batch again when due."""
        try:
            await self.export(batch, str(uuid.uuid4()), 0)
            if held and self._held is not None:
                await self._held.take_back(held)
        except Exception as error:
            log.warning(
                "plugin %s: exporting %d events ended in %s: %s; %s",
                self._plugin.plugin_name,
                len(batch),
                type(error).__name__,
                error,
                "their waiting jobs export them when due" if held else "they are not exported",
            )

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
