"""The durable job queue, `meta.jobs` and the `plugin_job` Celery task, on a real Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from plugin_server.ingestion.celery import PLUGIN_JOB_TASK
from plugin_server.jobs.celery_task import job_from_celery_task
from plugin_server.jobs.queue import JobHandler, JobPayloadError, JobQueue, PluginJob, TryAgainLater
from plugin_server.plugins.meta.jobs import PluginJobs, add_months, time_after
from tests.conftest import wait_until

CONFIG_ID, TEAM_ID = 39, 2


@pytest.fixture
def queue(clean_db: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]) -> JobQueue:
    """A queue over an empty job table (clean_db empties it)."""
    return JobQueue(pool, lease_seconds=1.0, poll_interval=0.05)


def job(type: str = "hello", payload: Any = None, run_at: datetime | None = None) -> PluginJob:
    return PluginJob(type, payload, CONFIG_ID, TEAM_ID, run_at or datetime.now(UTC))


@contextlib.asynccontextmanager
async def running(queue: JobQueue, handler: JobHandler, concurrency: int = 4) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(queue.run_forever(handler, stop_event=stop, concurrency=concurrency))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


class Recorder:
    """A handler that records the jobs it runs and when."""

    def __init__(self, work: Callable[[PluginJob], Awaitable[None]] | None = None) -> None:
        self.jobs: list[tuple[float, PluginJob]] = []
        self.work = work

    async def __call__(self, job: PluginJob) -> None:
        self.jobs.append((time.time(), job))
        if self.work:
            await self.work(job)


async def rows(pool: AsyncConnectionPool[Any]) -> list[dict[str, Any]]:
    async with pool.connection() as connection:
        cursor = await connection.execute("SELECT * FROM plugin_server_jobs ORDER BY id")
        found: list[dict[str, Any]] = await cursor.fetchall()
    return found


async def claimed_by_a_dead_runner(pool: AsyncConnectionPool[Any], *, attempts: int) -> None:
    """Mark every job as claimed by runner 'dead', whose lease ran out after `attempts` runs."""
    async with pool.connection() as connection:
        await connection.execute(
            """UPDATE plugin_server_jobs SET status = 'running', attempts = %s, locked_by = 'dead',
                   lease_until = now() - interval '1 second'""",
            (attempts,),
        )


async def test_a_job_to_run_now_runs_and_is_deleted(queue: JobQueue, pool: AsyncConnectionPool[Any]) -> None:
    recorder = Recorder()
    async with running(queue, recorder):
        await queue.enqueue(job("logReply", {"text": "hi", "list": [1, 2.5, None]}))
        await queue.enqueue(job("logReply", "just a string"))
        await wait_until(lambda: len(recorder.jobs) == 2)
    first, second = (ran for _, ran in recorder.jobs)
    assert (first.type, first.payload, first.plugin_config_id, first.plugin_config_team, first.kind) == (
        "logReply",
        {"text": "hi", "list": [1, 2.5, None]},
        CONFIG_ID,
        TEAM_ID,
        "job",
    )
    assert second.payload == "just a string"
    assert await rows(pool) == []


async def test_a_job_runs_when_its_time_comes_not_before(queue: JobQueue) -> None:
    recorder = Recorder()
    async with running(queue, recorder):
        run_at = datetime.now(UTC) + timedelta(seconds=0.6)
        await queue.enqueue(job(run_at=run_at))
        await asyncio.sleep(0.3)
        assert recorder.jobs == []
        await wait_until(lambda: len(recorder.jobs) == 1)
    ran_at, ran = recorder.jobs[0]
    assert ran_at >= run_at.timestamp() - 0.05  # the database clock decides, allow a little skew
    assert ran.run_at == run_at


async def test_a_failing_job_is_kept_with_its_error_and_not_retried(
    queue: JobQueue, pool: AsyncConnectionPool[Any]
) -> None:
    async def fail(_: PluginJob) -> None:
        raise ValueError("boom")

    recorder = Recorder(fail)
    async with running(queue, recorder):
        await queue.enqueue(job())
        await wait_until(lambda: len(recorder.jobs) == 1)
        await asyncio.sleep(0.3)
    assert len(recorder.jobs) == 1
    [row] = await rows(pool)
    assert (row["status"], row["last_error"], row["attempts"]) == ("failed", "ValueError: boom", 1)
    assert row["finished_at"] is not None and row["locked_by"] is None


async def test_failed_jobs_are_pruned_after_their_retention(
    queue: JobQueue, pool: AsyncConnectionPool[Any]
) -> None:
    await queue.enqueue(job())
    async with pool.connection() as connection:
        await connection.execute(
            "UPDATE plugin_server_jobs SET status = 'failed', finished_at = now() - interval '8 days'"
        )
    await queue.enqueue(job())
    await queue.recover_and_prune()
    assert [row["status"] for row in await rows(pool)] == ["waiting"]


async def test_at_most_concurrency_jobs_run_at_once(queue: JobQueue) -> None:
    active, most = 0, 0

    async def work(_: PluginJob) -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        await asyncio.sleep(0.2)
        active -= 1

    recorder = Recorder(work)
    async with running(queue, recorder, concurrency=3):
        for index in range(7):
            await queue.enqueue(job(payload=index))
        await wait_until(lambda: len(recorder.jobs) == 7)
    assert most == 3
    assert sorted(ran.payload for _, ran in recorder.jobs) == list(range(7))


async def test_two_runners_run_each_job_exactly_once(queue: JobQueue, pool: AsyncConnectionPool[Any]) -> None:
    other = JobQueue(pool, lease_seconds=1.0, poll_interval=0.05)
    seen: list[int] = []

    async def work(ran: PluginJob) -> None:
        seen.append(ran.payload)
        await asyncio.sleep(0.01)

    async with running(queue, Recorder(work)), running(other, Recorder(work)):
        for index in range(40):
            await other.enqueue(job(payload=index))
        await wait_until(lambda: len(seen) == 40)
        await asyncio.sleep(0.1)  # time for a second run of any job, if there were one
    assert sorted(seen) == list(range(40))


async def test_queue_depth_counts_due_waiting_jobs(queue: JobQueue) -> None:
    assert await queue.queue_depth() == 0
    for _ in range(3):
        await queue.enqueue(job())
    await queue.enqueue(job(run_at=datetime.now(UTC) + timedelta(hours=1)))
    assert await queue.queue_depth() == 3


async def test_the_job_of_a_dead_runner_runs_again(queue: JobQueue, pool: AsyncConnectionPool[Any]) -> None:
    await queue.enqueue(job(payload="orphan"))
    await claimed_by_a_dead_runner(pool, attempts=1)
    recorder = Recorder()
    async with running(queue, recorder):
        await wait_until(lambda: len(recorder.jobs) == 1)
    assert recorder.jobs[0][1].payload == "orphan"


async def test_a_job_the_server_could_not_run_runs_again_later_within_its_attempts(
    queue: JobQueue, pool: AsyncConnectionPool[Any]
) -> None:
    async def redis_gone(_: PluginJob) -> None:
        try:
            raise ConnectionError("Error UNKNOWN while writing to socket")
        except ConnectionError as error:
            raise TryAgainLater("the hung-call marks could not be read", delay=0.2) from error

    recorder = Recorder(redis_gone)
    async with running(queue, recorder):
        await queue.enqueue(job())
        await wait_until(lambda: len(recorder.jobs) == 1)
        await asyncio.sleep(0.1)
        [row] = await rows(pool)  # back in line, due after the delay, its run counted
        assert (row["status"], row["attempts"], row["locked_by"]) == ("waiting", 1, None)
        assert row["last_error"] == "ConnectionError: Error UNKNOWN while writing to socket"
        assert row["run_at"] > datetime.now(UTC)
        await wait_until(lambda: len(recorder.jobs) == queue.max_attempts, timeout=10)
        await asyncio.sleep(0.5)
    assert len(recorder.jobs) == queue.max_attempts  # then no more
    [row] = await rows(pool)
    assert (row["status"], row["attempts"]) == ("failed", queue.max_attempts)
    first, second = recorder.jobs[0][0], recorder.jobs[1][0]
    assert second - first >= 0.2


async def test_a_job_that_kills_every_runner_fails_after_max_attempts(
    queue: JobQueue, pool: AsyncConnectionPool[Any]
) -> None:
    await queue.enqueue(job())
    await claimed_by_a_dead_runner(pool, attempts=3)
    await queue.recover_and_prune()
    [row] = await rows(pool)
    assert row["status"] == "failed"
    assert row["last_error"] == "runner dead stopped during attempt 3 (no attempts left)"


async def test_a_running_job_keeps_its_lease(queue: JobQueue, pool: AsyncConnectionPool[Any]) -> None:
    """A job that runs longer than the lease is not taken by another runner meanwhile."""
    other = JobQueue(pool, lease_seconds=1.0, poll_interval=0.05)
    recorder = Recorder(lambda _: asyncio.sleep(1.6))
    other_recorder = Recorder()
    async with running(queue, recorder):
        await queue.enqueue(job())
        await wait_until(lambda: len(recorder.jobs) == 1)
        async with running(other, other_recorder):
            await asyncio.sleep(1.4)
    assert other_recorder.jobs == []


async def test_stopping_puts_unfinished_jobs_back(queue: JobQueue, pool: AsyncConnectionPool[Any]) -> None:
    recorder = Recorder(lambda _: asyncio.sleep(60))
    stop = asyncio.Event()
    task = asyncio.create_task(queue.run_forever(recorder, stop_event=stop, drain_timeout=0.1))
    await queue.enqueue(job())
    await wait_until(lambda: len(recorder.jobs) == 1)
    stop.set()
    await asyncio.wait_for(task, 5)
    [row] = await rows(pool)
    assert (row["status"], row["attempts"], row["locked_by"]) == ("waiting", 0, None)


# --- meta.jobs


async def test_meta_jobs_queue_by_attribute_and_item(queue: JobQueue, pool: AsyncConnectionPool[Any]) -> None:
    now = datetime(2024, 1, 31, 12, 0, tzinfo=UTC)
    jobs = PluginJobs(queue, CONFIG_ID, TEAM_ID, clock=lambda: now)
    await jobs.logReply("runNow").runNow()
    await jobs["log-reply"]({"a": 1}).run_in(2, "hours")
    await jobs.logReply().runIn(1, "month")
    await jobs.logReply().runAt(datetime(2030, 5, 1, 8, 30))
    await jobs.logReply().run_at(1_700_000_000_000)
    await jobs.queue().run_now()  # a job may be called like the object's own fields
    stored = [
        (row["kind"], row["type"], row["payload"], row["plugin_config_id"], row["team_id"], row["run_at"])
        for row in await rows(pool)
    ]
    assert stored == [
        ("job", "logReply", "runNow", CONFIG_ID, TEAM_ID, now),
        ("job", "log-reply", {"a": 1}, CONFIG_ID, TEAM_ID, now + timedelta(hours=2)),
        ("job", "logReply", None, CONFIG_ID, TEAM_ID, datetime(2024, 2, 29, 12, 0, tzinfo=UTC)),
        ("job", "logReply", None, CONFIG_ID, TEAM_ID, datetime(2030, 5, 1, 8, 30, tzinfo=UTC)),
        ("job", "logReply", None, CONFIG_ID, TEAM_ID, datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("job", "queue", None, CONFIG_ID, TEAM_ID, now),
    ]


async def test_meta_jobs_run_through_the_queue(queue: JobQueue) -> None:
    recorder = Recorder()
    jobs = PluginJobs(queue, CONFIG_ID, TEAM_ID)
    async with running(queue, recorder):
        await jobs.logReply("runIn").runIn(300, "milliseconds")
        await jobs.logReply("runAt").runAt(datetime.now(UTC))
        await jobs.logReply("runNow").runNow()
        await wait_until(lambda: len(recorder.jobs) == 3)
    assert [ran.payload for _, ran in recorder.jobs] == ["runAt", "runNow", "runIn"]


async def test_meta_jobs_payload_must_be_json(queue: JobQueue, pool: AsyncConnectionPool[Any]) -> None:
    jobs = PluginJobs(queue, CONFIG_ID, TEAM_ID)
    with pytest.raises(JobPayloadError, match="JSON-serialisable"):
        await jobs.logReply({"when": object()}).runNow()
    with pytest.raises(JobPayloadError, match="JSON-serialisable"):
        await jobs.logReply({1: "non-string key"}).runNow()
    assert await rows(pool) == []


NOW = datetime(2024, 1, 31, 10, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("duration", "unit", "expected"),
    [
        (250, "milliseconds", NOW + timedelta(milliseconds=250)),
        (1, "millisecond", NOW + timedelta(milliseconds=1)),
        (1.5, "seconds", NOW + timedelta(seconds=1.5)),
        (1, "minute", NOW + timedelta(minutes=1)),
        (2, "hours", NOW + timedelta(hours=2)),
        (1, "day", NOW + timedelta(days=1)),
        (2, "weeks", NOW + timedelta(weeks=2)),
        (-1, "hour", NOW - timedelta(hours=1)),
        # Calendar units: bug 5 (a month of 30 weeks) fixed.
        (1, "month", datetime(2024, 2, 29, 10, 30, tzinfo=UTC)),
        (2, "months", datetime(2024, 3, 31, 10, 30, tzinfo=UTC)),
        (13, "months", datetime(2025, 2, 28, 10, 30, tzinfo=UTC)),
        (-2, "months", datetime(2023, 11, 30, 10, 30, tzinfo=UTC)),
        (1.0, "quarter", datetime(2024, 4, 30, 10, 30, tzinfo=UTC)),
        (1, "year", datetime(2025, 1, 31, 10, 30, tzinfo=UTC)),
    ],
)
def test_run_in_units(duration: float, unit: str, expected: datetime) -> None:
    assert time_after(NOW, duration, unit) == expected


def test_a_calendar_year_after_29_february_is_28_february() -> None:
    assert add_months(datetime(2024, 2, 29, tzinfo=UTC), 12) == datetime(2025, 2, 28, tzinfo=UTC)


@pytest.mark.parametrize(
    ("duration", "unit", "error", "message"),
    [
        (1, "fortnight", ValueError, "Unknown time unit: fortnights"),
        (1, "Hours", ValueError, "Unknown time unit: Hours"),
        (1.5, "months", ValueError, "needs a whole number"),
        (float("nan"), "hours", ValueError, "finite"),
        (10**12, "years", ValueError, "out of range"),
        (10**15, "days", ValueError, "out of range"),
        ("5", "hours", TypeError, "must be a number"),
        (True, "hours", TypeError, "must be a number"),
        (1, None, TypeError, "unit must be a string"),
    ],
)
def test_run_in_errors(duration: Any, unit: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        time_after(NOW, duration, unit)


async def test_run_at_needs_a_date(queue: JobQueue) -> None:
    with pytest.raises(TypeError, match="runAt needs a date"):
        await PluginJobs(queue, CONFIG_ID, TEAM_ID).logReply().runAt("tomorrow")  # type: ignore[arg-type]


# --- the plugin_job Celery task


def test_plugin_job_task_args_make_a_job_to_run_now() -> None:
    assert PLUGIN_JOB_TASK == "posthog.tasks.plugins.plugin_job"
    before = datetime.now(UTC)
    made = job_from_celery_task(
        [TEAM_ID, CONFIG_ID, "exportHistoricalEvents", "start", {"dateFrom": "x"}, {}]
    )
    assert (made.type, made.payload, made.plugin_config_id, made.plugin_config_team, made.kind) == (
        "exportHistoricalEvents",
        {"dateFrom": "x", "$operation": "start"},
        CONFIG_ID,
        TEAM_ID,
        "job",
    )
    assert before <= made.run_at <= datetime.now(UTC)
    assert job_from_celery_task([TEAM_ID, CONFIG_ID, "job", "start", None]).payload == {"$operation": "start"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([TEAM_ID, CONFIG_ID, "job", "start"], "needs 5 args"),
        (["2", CONFIG_ID, "job", "start", {}], "pluginConfigTeam must be an integer"),
        ([TEAM_ID, None, "job", "start", {}], "pluginConfigId must be an integer"),
        ([TEAM_ID, CONFIG_ID, 7, "start", {}], "type must be a string"),
        ([TEAM_ID, CONFIG_ID, "job", "start", "text"], "payload must be an object"),
    ],
)
def test_plugin_job_task_with_bad_args(args: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        job_from_celery_task(args)


async def test_plugin_job_task_runs_through_the_queue(queue: JobQueue) -> None:
    recorder = Recorder()
    async with running(queue, recorder):
        await queue.enqueue(job_from_celery_task([TEAM_ID, CONFIG_ID, "myJob", "start", {"n": 1}]))
        await wait_until(lambda: len(recorder.jobs) == 1)
    assert recorder.jobs[0][1].payload == {"n": 1, "$operation": "start"}


async def test_a_runner_takes_only_the_kinds_it_is_given(
    queue: JobQueue, pool: AsyncConnectionPool[Any]
) -> None:
    """Hook deliveries have a runner of their own, so plugin jobs and hooks never wait for each other."""
    hook = PluginJob("webhook", {"url": "x"}, 0, TEAM_ID, datetime.now(UTC), kind="hook")
    await queue.enqueue(job("plugin"))
    await queue.enqueue(hook)
    plugin_jobs, hooks = Recorder(), Recorder()
    stop = asyncio.Event()
    hook_runner = asyncio.create_task(queue.run_forever(hooks, stop_event=stop, kinds=("hook",)))
    async with running(queue, plugin_jobs):
        await wait_until(lambda: len(plugin_jobs.jobs) == 1 and len(hooks.jobs) == 1)
    stop.set()
    await hook_runner
    assert [j.type for _, j in plugin_jobs.jobs] == ["plugin"]
    assert [(j.type, j.kind) for _, j in hooks.jobs] == [("webhook", "hook")]
    assert await rows(pool) == []
