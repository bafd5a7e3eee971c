"""`meta.jobs`: `jobs.<name>(payload)` (or `jobs[name]`) gives a runner with `run_now()`,
`run_in(duration, unit)` and `run_at(date)` (also `runNow`/`runIn`/`runAt`) that queues the job.

Units are milliseconds, seconds, minutes, hours, days and weeks (fixed lengths), and months, quarters
and years, which are calendar units (the original's bug 5 made a month 30 weeks): `run_in(1, 'month')`
on 31 January runs on the last day of February at the same time of day. A calendar unit needs a whole
number. A unit may be singular ('hour'); any other unit is an error, as in the original.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from plugin_server.jobs.queue import JobQueue, PluginJob

_FIXED_MILLISECONDS = {
    "milliseconds": 1,
    "seconds": 1000,
    "minutes": 60_000,
    "hours": 3_600_000,
    "days": 86_400_000,
    "weeks": 604_800_000,
}
_CALENDAR_MONTHS = {"months": 1, "quarters": 3, "years": 12}


def add_months(moment: datetime, months: int) -> datetime:
    """The same time `months` calendar months later (or earlier), on the month's last day if need be."""
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def time_after(now: datetime, duration: float, unit: str) -> datetime:
    """`now` plus `duration` `unit`s, as `runIn(duration, unit)` means it."""
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        raise TypeError(f"runIn duration must be a number, not {type(duration).__name__}")
    if not math.isfinite(duration):
        raise ValueError(f"runIn duration must be finite, not {duration}")
    if not isinstance(unit, str):
        raise TypeError(f"runIn unit must be a string, not {type(unit).__name__}")
    plural = unit if unit.endswith("s") else f"{unit}s"
    if plural not in _FIXED_MILLISECONDS and plural not in _CALENDAR_MONTHS:
        raise ValueError(f"Unknown time unit: {plural}")
    if plural in _CALENDAR_MONTHS and duration != int(duration):
        raise ValueError(f"runIn with {plural} needs a whole number, not {duration}")
    try:
        if plural in _CALENDAR_MONTHS:
            return add_months(now, int(duration) * _CALENDAR_MONTHS[plural])
        return now + timedelta(milliseconds=duration * _FIXED_MILLISECONDS[plural])
    except (OverflowError, ValueError):
        raise ValueError(f"runIn({duration}, {unit!r}) is out of range") from None


def _moment(date: datetime | float) -> datetime:
    """A datetime, or milliseconds since the epoch as a JS `Date.valueOf()` gives them."""
    if isinstance(date, datetime):
        return date if date.tzinfo else date.replace(tzinfo=UTC)
    if isinstance(date, bool) or not isinstance(date, int | float):
        raise TypeError(f"runAt needs a date, not {type(date).__name__}")
    return datetime.fromtimestamp(date / 1000, UTC)


class JobRunner:
    """Queues one job, now, later or at a given time."""

    def __init__(
        self, queue_at: Callable[[datetime], Awaitable[None]], clock: Callable[[], datetime]
    ) -> None:
        self._queue_at = queue_at
        self._clock = clock

    async def run_now(self) -> None:
        await self._queue_at(self._clock())

    async def run_in(self, duration: float, unit: str) -> None:
        await self._queue_at(time_after(self._clock(), duration, unit))

    async def run_at(self, date: datetime | float) -> None:
        await self._queue_at(_moment(date))

    # The names JS plugins call.
    runNow = run_now
    runIn = run_in
    runAt = run_at


class PluginJobs:
    """`meta.jobs` of one plugin config: any attribute or item is a job of that name."""

    def __init__(
        self,
        queue: JobQueue,
        plugin_config_id: int,
        team_id: int,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        # Private names, so that they do not hide jobs called `queue` or `clock`.
        self._queue = queue
        self._plugin_config_id = plugin_config_id
        self._team_id = team_id
        self._clock = clock

    def __getitem__(self, name: str) -> Callable[..., JobRunner]:
        def job(payload: Any = None) -> JobRunner:
            async def queue_at(run_at: datetime) -> None:
                await self._queue.enqueue(
                    PluginJob(
                        type=name,
                        payload=payload,
                        plugin_config_id=self._plugin_config_id,
                        plugin_config_team=self._team_id,
                        run_at=run_at,
                    )
                )

            return JobRunner(queue_at, self._clock)

        return job

    def __getattr__(self, name: str) -> Callable[..., JobRunner]:
        if name.startswith("__"):  # keep copy, pickle and introspection working
            raise AttributeError(name)
        return self[name]
