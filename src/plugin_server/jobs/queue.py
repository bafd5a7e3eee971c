"""A durable Postgres queue of plugin jobs and scheduled-task runs (table `plugin_server_jobs`).

Runners claim due jobs with `FOR UPDATE SKIP LOCKED` and hold each claimed job under a lease that
they extend while the handler runs. When a runner dies (even `kill -9`), its lease runs out and any
other runner puts the job back in line, so it runs again, up to `max_attempts` runs in all. A
handler that raises is not retried (plugins retry themselves, as in the original): the job is kept
as 'failed' with the error text, and pruned after `failed_retention`. A handler that raises
`TryAgainLater` (the server's own failure, such as a Redis connection lost, not the plugin's) puts the
job back in line after a delay, within the same `max_attempts`. A job that succeeds is deleted.
All times that decide what is due come from the database clock, so runners need not agree on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
import psycopg
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

JobKind = Literal["job", "schedule", "hook"]


@dataclass(frozen=True, slots=True)
class PluginJob:
    """One run of `jobs[type](payload, meta)` (kind 'job'), of the scheduled task `type` (kind 'schedule'),
    or a delivery of an action's hook (kind 'hook', plugin config id 0; see plugin_server.actions.delivery).

    `payload` is any JSON value (the original's plugins pass strings as well as objects)."""

    type: str
    payload: Any
    plugin_config_id: int
    plugin_config_team: int
    run_at: datetime
    kind: JobKind = "job"


JobHandler = Callable[[PluginJob], Awaitable[None]]


class TryAgainLater(Exception):
    """The job could not run for a passing reason of the server's (not the plugin's): run it again
    after `delay` seconds, if it has attempts left."""

    def __init__(self, reason: str, delay: float = 10.0) -> None:
        super().__init__(reason)
        self.delay = delay


class JobPayloadError(TypeError):
    """The payload of a job cannot be stored as JSON."""


def encode_payload(payload: Any) -> str:
    try:
        return orjson.dumps(payload).decode()
    except TypeError as error:
        raise JobPayloadError(f"job payload must be JSON-serialisable: {error}") from None


def _row(job: PluginJob) -> tuple[Any, ...]:
    """The job's values for _INSERT (its payload as JSON text, its run_at in UTC last)."""
    return (
        job.kind,
        job.type,
        encode_payload(job.payload),
        job.plugin_config_id,
        job.plugin_config_team,
        _as_utc(job.run_at),
    )


def _as_utc(moment: datetime) -> datetime:
    """Aware datetimes as they are; naive ones are taken to be UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _error_text(error: BaseException) -> str:
    return "".join(traceback.format_exception_only(error)).strip()


_INSERT = """
INSERT INTO plugin_server_jobs (kind, type, payload, plugin_config_id, team_id, run_at)
VALUES (%s, %s, %s::jsonb, %s, %s, %s)
"""

_CLAIM = """
UPDATE plugin_server_jobs SET status = 'running', attempts = attempts + 1, locked_by = %(runner)s,
    lease_until = now() + %(lease)s
WHERE id IN (
    SELECT id FROM plugin_server_jobs WHERE status = 'waiting' AND run_at <= now() AND kind = ANY(%(kinds)s)
    ORDER BY run_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING id, kind, type, payload, plugin_config_id, team_id, run_at
"""

_EXTEND = """
UPDATE plugin_server_jobs SET lease_until = now() + %(lease)s
WHERE id = ANY(%(ids)s) AND locked_by = %(runner)s AND status = 'running'
RETURNING id
"""

_TAKE_BACK = "DELETE FROM plugin_server_jobs WHERE id = ANY(%s) AND status = 'waiting'"

_FINISH = "DELETE FROM plugin_server_jobs WHERE id = %s AND locked_by = %s AND status = 'running'"

_FAIL = """
UPDATE plugin_server_jobs SET status = 'failed', last_error = %s, finished_at = now(), locked_by = NULL,
    lease_until = NULL
WHERE id = %s AND locked_by = %s AND status = 'running'
"""

# A job whose run met a passing failure of the server goes back in line for later, while it has attempts left.
_AGAIN_LATER = """
UPDATE plugin_server_jobs SET
    status = CASE WHEN attempts >= %(max_attempts)s THEN 'failed' ELSE 'waiting' END,
    finished_at = CASE WHEN attempts >= %(max_attempts)s THEN now() END,
    run_at = now() + %(delay)s, last_error = %(error)s, locked_by = NULL, lease_until = NULL
WHERE id = %(id)s AND locked_by = %(runner)s AND status = 'running'
"""

# A job stopped by a shutdown did not fail: it goes back in line and the interrupted run is not counted.
_RELEASE = """
UPDATE plugin_server_jobs SET status = 'waiting', attempts = attempts - 1, locked_by = NULL, lease_until = NULL
WHERE id = ANY(%s) AND locked_by = %s AND status = 'running'
"""

_RECOVER = """
UPDATE plugin_server_jobs SET
    status = CASE WHEN attempts >= %(max_attempts)s THEN 'failed' ELSE 'waiting' END,
    finished_at = CASE WHEN attempts >= %(max_attempts)s THEN now() END,
    last_error = 'runner ' || locked_by || ' stopped during attempt ' || attempts
        || CASE WHEN attempts >= %(max_attempts)s THEN ' (no attempts left)' ELSE '' END,
    locked_by = NULL, lease_until = NULL
WHERE status = 'running' AND lease_until < now()
RETURNING id, type, plugin_config_id, status, last_error
"""

_PRUNE = "DELETE FROM plugin_server_jobs WHERE status = 'failed' AND finished_at < now() - %s"

_DEPTH = "SELECT count(*) AS depth FROM plugin_server_jobs WHERE status = 'waiting' AND run_at <= now()"

# Records the period first: a period already handled (by this or another instance) queues nothing.
# Then the debounce index skips a task whose previous run is still waiting or running.
_ENQUEUE_SCHEDULED = """
WITH wanted AS (
    SELECT * FROM unnest(%(config_ids)s::integer[], %(tasks)s::text[]) AS w(plugin_config_id, task)
), new_periods AS (
    INSERT INTO plugin_server_schedule_periods (period_start, plugin_config_id, task)
    SELECT %(period)s, plugin_config_id, task FROM wanted
    ON CONFLICT DO NOTHING
    RETURNING plugin_config_id, task
)
INSERT INTO plugin_server_jobs (kind, type, payload, plugin_config_id, team_id, run_at)
SELECT 'schedule', p.task, NULL, p.plugin_config_id, c.team_id, %(period)s
FROM new_periods p JOIN posthog_pluginconfig c ON c.id = p.plugin_config_id AND c.team_id IS NOT NULL
ON CONFLICT (plugin_config_id, type) WHERE kind = 'schedule' AND status IN ('waiting', 'running') DO NOTHING
RETURNING id
"""

# Periods are only ever scheduled at their start, so a day of them is plenty to stop a late duplicate.
_PRUNE_PERIODS = "DELETE FROM plugin_server_schedule_periods WHERE period_start < %s - interval '1 day'"


class JobQueue:
    """Producer and runner of the job queue, over a pool of the process (autocommit connections)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        max_attempts: int = 3,
        failed_retention: timedelta = timedelta(days=7),
    ) -> None:
        self.pool = pool
        self.lease = timedelta(seconds=lease_seconds)
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.failed_retention = failed_retention
        self.runner_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        # Set when this process queues a due job or a running job ends, so that its runner looks for
        # work now rather than at the next poll.
        self._due = asyncio.Event()

    async def enqueue(self, job: PluginJob) -> None:
        await self.hold(job)

    async def enqueue_many(self, jobs: Sequence[PluginJob], connection: psycopg.AsyncConnection[Any]) -> None:
        """Queue jobs on the caller's connection, so that they are queued only if its transaction commits
        (call `wake` after the commit for this process's runner to look at once)."""
        rows = [_row(job) for job in jobs]
        if not rows:
            return
        async with connection.cursor() as cursor:
            await cursor.executemany(_INSERT, rows)

    async def hold(self, job: PluginJob) -> int:
        """Queue a job and answer its id, so that `take_back` can take it back while it waits."""
        row = _row(job)
        async with self.pool.connection() as connection:
            cursor = await connection.cursor(row_factory=tuple_row).execute(_INSERT + " RETURNING id", row)
            inserted = await cursor.fetchone()
        assert inserted is not None
        if row[-1] <= datetime.now(UTC):
            self._due.set()
        return int(inserted[0])

    async def take_back(self, ids: Sequence[int]) -> None:
        """Delete these jobs if they still wait (one a runner has taken runs)."""
        async with self.pool.connection() as connection:
            await connection.execute(_TAKE_BACK, (list(ids),))

    def wake(self) -> None:
        """Make this process's runner look for due jobs now rather than at its next poll."""
        self._due.set()

    async def enqueue_scheduled(self, period_start: datetime, tasks: Mapping[int, Sequence[str]]) -> int:
        """Queue each (plugin config, task) for the period starting at `period_start`, at most once per
        period across all instances, and not while its previous run is still pending. Returns how many
        runs were queued."""
        pairs = [(config_id, task) for config_id, names in tasks.items() for task in names]
        period = _as_utc(period_start)
        params = {
            "config_ids": [config_id for config_id, _ in pairs],
            "tasks": [task for _, task in pairs],
            "period": period,
        }
        async with self.pool.connection() as connection:
            cursor = await connection.execute(_ENQUEUE_SCHEDULED, params)
            queued = len(await cursor.fetchall())
            await connection.execute(_PRUNE_PERIODS, (period,))
        if queued:
            self._due.set()
        return queued

    async def queue_depth(self) -> int:
        """Jobs that are due and waiting for a runner."""
        async with self.pool.connection() as connection:
            cursor = await connection.cursor(row_factory=dict_row).execute(_DEPTH)
            row = await cursor.fetchone()
        assert row is not None
        return int(row["depth"])

    async def recover_and_prune(self) -> None:
        """Put back the jobs of runners that died, and delete failed jobs past their retention."""
        async with self.pool.connection() as connection:
            cursor = await connection.cursor(row_factory=dict_row).execute(
                _RECOVER, {"max_attempts": self.max_attempts}
            )
            for row in await cursor.fetchall():
                log.warning(
                    "job %s (%s of plugin config %s) is %s again: %s",
                    row["id"],
                    row["type"],
                    row["plugin_config_id"],
                    row["status"],
                    row["last_error"],
                )
            await connection.execute(_PRUNE, (self.failed_retention,))

    async def run_forever(
        self,
        handler: JobHandler,
        *,
        stop_event: asyncio.Event,
        concurrency: int = 4,
        drain_timeout: float = 5.0,
        kinds: Sequence[JobKind] = ("job", "schedule"),
    ) -> None:
        """Run due jobs of these kinds, at most `concurrency` at once, until `stop_event` is set.

        On stop, running jobs get `drain_timeout` seconds to finish; the rest are cancelled and put back
        in line for another runner."""
        running: dict[int, asyncio.Task[None]] = {}
        keeper = asyncio.create_task(self._keep_leases(running))
        next_housekeeping = 0.0
        try:
            while not stop_event.is_set():
                self._due.clear()
                claimed: list[tuple[int, PluginJob]] = []
                try:
                    if time.monotonic() >= next_housekeeping:
                        await self.recover_and_prune()
                        next_housekeeping = time.monotonic() + self.lease.total_seconds() / 2
                    if len(running) < concurrency:
                        claimed = await self._claim(concurrency - len(running), kinds)
                except psycopg.Error:
                    log.exception("job queue: database error, retrying after %ss", self.poll_interval)
                for job_id, job in claimed:
                    task = asyncio.create_task(self._run_one(handler, job_id, job))
                    running[job_id] = task
                    task.add_done_callback(functools.partial(self._forget, running, job_id))
                await _wait_any((stop_event, self._due), self.poll_interval)
        finally:
            await self._drain(running, drain_timeout)
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    def _forget(self, running: dict[int, asyncio.Task[None]], job_id: int, _: asyncio.Task[None]) -> None:
        running.pop(job_id, None)
        self._due.set()  # a slot is free: look for more work now

    async def _claim(self, limit: int, kinds: Sequence[JobKind]) -> list[tuple[int, PluginJob]]:
        params = {"runner": self.runner_id, "lease": self.lease, "limit": limit, "kinds": list(kinds)}
        async with self.pool.connection() as connection:
            cursor = await connection.cursor(row_factory=dict_row).execute(_CLAIM, params)
            rows = await cursor.fetchall()
        return [
            (
                row["id"],
                PluginJob(
                    type=row["type"],
                    payload=row["payload"],
                    plugin_config_id=row["plugin_config_id"],
                    plugin_config_team=row["team_id"],
                    run_at=row["run_at"],
                    kind=row["kind"],
                ),
            )
            for row in rows
        ]

    async def _run_one(self, handler: JobHandler, job_id: int, job: PluginJob) -> None:
        try:
            await handler(job)
        except asyncio.CancelledError:
            raise  # _drain puts it back in line
        except TryAgainLater as error:
            log.warning(
                "job %s (%s of plugin config %s) to run again later: %s",
                job_id,
                job.type,
                job.plugin_config_id,
                error,
            )
            params = {
                "max_attempts": self.max_attempts,
                "delay": timedelta(seconds=error.delay),
                "error": _error_text(error.__cause__ or error),
                "id": job_id,
                "runner": self.runner_id,
            }
            await self._record(_AGAIN_LATER, params)
        except Exception as error:
            log.info(
                "job %s (%s of plugin config %s) failed: %r", job_id, job.type, job.plugin_config_id, error
            )
            await self._record(_FAIL, (_error_text(error), job_id, self.runner_id))
        else:
            await self._record(_FINISH, (job_id, self.runner_id))

    async def _record(self, query: str, params: tuple[Any, ...] | dict[str, Any]) -> None:
        """Store a job's outcome. If that fails, the lease runs out and the job runs again."""
        try:
            async with self.pool.connection() as connection:
                await connection.execute(query, params)
        except psycopg.Error:
            log.exception("job queue: could not record the outcome of a job")

    async def _keep_leases(self, running: Mapping[int, asyncio.Task[None]]) -> None:
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            ids = list(running)
            if not ids:
                continue
            try:
                async with self.pool.connection() as connection:
                    cursor = await connection.cursor(row_factory=dict_row).execute(
                        _EXTEND, {"lease": self.lease, "ids": ids, "runner": self.runner_id}
                    )
                    kept = {row["id"] for row in await cursor.fetchall()}
            except psycopg.Error:
                log.exception("job queue: could not extend the leases of running jobs")
                continue
            lost = [job_id for job_id in ids if job_id not in kept and job_id in running]
            if lost:
                log.warning("job queue: lost the lease of jobs %s; they may run twice", lost)

    async def _drain(self, running: dict[int, asyncio.Task[None]], timeout: float) -> None:
        if not running:
            return
        tasks = list(running.values())
        _, unfinished = await asyncio.wait(tasks, timeout=timeout)
        interrupted = [job_id for job_id, task in running.items() if task in unfinished]
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        if interrupted:
            log.info("job queue: putting back interrupted jobs %s", interrupted)
            await self._record(_RELEASE, (interrupted, self.runner_id))


async def _wait_any(events: Sequence[asyncio.Event], timeout: float) -> None:
    """Return when any of the events is set, or after `timeout` seconds."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
