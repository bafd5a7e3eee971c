"""runEveryMinute / runEveryHour / runEveryDay: once per period per plugin config, across the cluster.

One instance at a time holds the Redis lock `plugin-server:locks:schedule`. At each minute boundary
(UTC) the holder queues one run per (plugin config, task whose period starts then) into the durable
job queue, where any worker runs it. Two guards live in the database, not in the lock: a period is
recorded when it is scheduled, so two instances that both believe they hold the lock still queue it
once; and a task whose previous run is still waiting or running is skipped (debounce). A holder that
takes over mid-minute schedules that minute's period if nobody did, so a failover within the minute
loses nothing. Days start at 00:00 UTC (the original used the server's local time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis

from plugin_server.jobs.queue import JobQueue
from plugin_server.jobs.redis_lock import RedisLock

log = logging.getLogger(__name__)

SCHEDULE_LOCK_KEY = "plugin-server:locks:schedule"

ScheduleSource = Callable[[], Awaitable[Mapping[int, Sequence[str]]]]
"""Returns, for each plugin config id, the names of the scheduled tasks its plugin exports."""

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def minute_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def tasks_due_at(boundary: datetime) -> tuple[str, ...]:
    """The tasks whose period starts at this minute boundary (UTC)."""
    boundary = boundary.astimezone(UTC)
    if boundary.minute != 0:
        return ("runEveryMinute",)
    if boundary.hour != 0:
        return ("runEveryMinute", "runEveryHour")
    return ("runEveryMinute", "runEveryHour", "runEveryDay")


class Scheduler:
    def __init__(
        self,
        redis: aioredis.Redis,
        job_queue: JobQueue,
        get_schedule: ScheduleSource,
        *,
        lock_ttl: float,
        clock: Clock = utc_now,
    ) -> None:
        self.lock = RedisLock(redis, SCHEDULE_LOCK_KEY, ttl=lock_ttl)
        self.job_queue = job_queue
        self.get_schedule = get_schedule
        self.clock = clock
        self._last_fired: datetime | None = None

    async def fire(self, boundary: datetime) -> int:
        """Queue the runs of the tasks whose period starts at this minute boundary; returns how many."""
        due = tasks_due_at(boundary)
        schedule = await self.get_schedule()
        wanted = {config_id: [task for task in tasks if task in due] for config_id, tasks in schedule.items()}
        return await self.job_queue.enqueue_scheduled(minute_start(boundary), wanted)

    async def run(self, stop_event: asyncio.Event) -> None:
        """Hold the lock when possible and, while holding it, fire each minute boundary, until stopped."""
        keeper = asyncio.create_task(self.lock.keep(stop_event))
        try:
            while not stop_event.is_set():
                await self._fire_if_due()
                now = self.clock()
                until_next_minute = (minute_start(now) + timedelta(minutes=1) - now).total_seconds()
                # Wake up soon after the lock may have come to us, too, to fire the current minute then.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_event.wait(), min(until_next_minute, self.lock.ttl / 10))
        finally:
            if not stop_event.is_set():
                keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _fire_if_due(self) -> None:
        boundary = minute_start(self.clock())
        if not self.lock.held or boundary == self._last_fired:
            return
        try:
            queued = await self.fire(boundary)
        except Exception:  # a failed round is tried again at the next wake-up, within the minute
            log.exception("scheduler: could not schedule the tasks of %s", boundary.isoformat())
            return
        self._last_fired = boundary
        if queued:
            log.debug("scheduler: queued %s scheduled task runs for %s", queued, boundary.isoformat())
