"""Scheduled tasks: one lock holder in the cluster, each period queued once, debounce, boundaries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.jobs.queue import JobQueue, PluginJob
from plugin_server.jobs.scheduler import SCHEDULE_LOCK_KEY, Scheduler, minute_start, tasks_due_at
from tests.conftest import wait_until

TTL = 1.0
ALL_TASKS = ("runEveryMinute", "runEveryHour", "runEveryDay")


@pytest.fixture
def config_ids(clean_db: psycopg.Connection[Any], team: CreatedTeam) -> list[int]:
    """Three enabled plugin configs of team 2 (and, from clean_db, an empty job queue)."""
    [(plugin_id,)] = clean_db.execute(
        "INSERT INTO posthog_plugin (organization_id, name) VALUES (%s, 'scheduled') RETURNING id",
        (team.organization_id,),
    ).fetchall()
    return [
        clean_db.execute(
            "INSERT INTO posthog_pluginconfig (team_id, plugin_id, enabled) VALUES (%s, %s, true) RETURNING id",
            (team.team_id, plugin_id),
        ).fetchall()[0][0]
        for _ in range(3)
    ]


@pytest.fixture
def queue(pool: AsyncConnectionPool[Any]) -> JobQueue:
    return JobQueue(pool, lease_seconds=1.0, poll_interval=0.05)


def fixed(schedule: Mapping[int, Sequence[str]]) -> Callable[[], Any]:
    async def get_schedule() -> Mapping[int, Sequence[str]]:
        return schedule

    return get_schedule


async def queued(pool: AsyncConnectionPool[Any]) -> list[tuple[int, str, datetime, str]]:
    async with pool.connection() as connection:
        cursor = await connection.execute(
            """SELECT plugin_config_id, type, run_at, status FROM plugin_server_jobs
               WHERE kind = 'schedule' ORDER BY plugin_config_id, type, run_at"""
        )
        return [
            (row["plugin_config_id"], row["type"], row["run_at"], row["status"])
            for row in await cursor.fetchall()
        ]


async def queued_once_settled(
    pool: AsyncConnectionPool[Any], expected: list[tuple[int, str, datetime, str]], timeout: float = 5
) -> list[tuple[int, str, datetime, str]]:
    """The queued schedule jobs once they are `expected`, or as they are after `timeout` seconds (a
    busy machine may run the scheduler's loop late)."""
    deadline = time.monotonic() + timeout
    while (jobs := await queued(pool)) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return jobs


# --- boundaries


@pytest.mark.parametrize(
    ("moment", "due"),
    [
        (datetime(2024, 5, 6, 12, 34, tzinfo=UTC), ("runEveryMinute",)),
        (datetime(2024, 5, 6, 12, 0, tzinfo=UTC), ("runEveryMinute", "runEveryHour")),
        (datetime(2024, 5, 6, 0, 0, tzinfo=UTC), ALL_TASKS),
        (datetime(2024, 5, 6, 2, 0, tzinfo=timezone(timedelta(hours=2))), ALL_TASKS),  # 00:00 UTC
        (
            datetime(2024, 5, 6, 0, 0, tzinfo=timezone(timedelta(hours=-5))),
            ("runEveryMinute", "runEveryHour"),
        ),
        (datetime(2024, 5, 6, 5, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))), ALL_TASKS),
    ],
)
def test_tasks_due_at_a_boundary(moment: datetime, due: tuple[str, ...]) -> None:
    assert tasks_due_at(moment) == due


def test_minute_start_is_in_utc() -> None:
    moment = datetime(2024, 5, 6, 1, 59, 59, 999999, tzinfo=timezone(timedelta(hours=2)))
    assert minute_start(moment) == datetime(2024, 5, 5, 23, 59, tzinfo=UTC)


async def test_the_run_loop_fires_the_current_boundary_and_the_next_ones(
    aredis: aioredis.Redis, queue: JobQueue, pool: AsyncConnectionPool[Any], config_ids: list[int]
) -> None:
    now = datetime(2024, 5, 6, 0, 0, 30, tzinfo=UTC)
    config = config_ids[0]
    scheduler = Scheduler(aredis, queue, fixed({config: ALL_TASKS}), lock_ttl=TTL, clock=lambda: now)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    try:
        midnight = datetime(2024, 5, 6, tzinfo=UTC)
        expected = [(config, name, midnight, "waiting") for name in sorted(ALL_TASKS)]
        await wait_until(lambda: scheduler.lock.held)
        assert await queued_once_settled(pool, expected) == expected

        async with pool.connection() as connection:  # the runs are done
            await connection.execute("DELETE FROM plugin_server_jobs")
        now = datetime(2024, 5, 6, 0, 1, 2, tzinfo=UTC)
        next_minute = [(config, "runEveryMinute", midnight + timedelta(minutes=1), "waiting")]
        assert await queued_once_settled(pool, next_minute) == next_minute
    finally:
        stop.set()
        await task


# --- the lock


async def test_exactly_one_of_three_schedulers_holds_the_lock_and_another_takes_over(
    aredis: aioredis.Redis, queue: JobQueue, config_ids: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    schedulers = [Scheduler(aredis, queue, fixed({}), lock_ttl=TTL) for _ in range(3)]
    stops = [asyncio.Event() for _ in schedulers]
    tasks = [asyncio.create_task(s.run(stop)) for s, stop in zip(schedulers, stops, strict=True)]

    def holders() -> list[int]:
        return [index for index, scheduler in enumerate(schedulers) if scheduler.lock.held]

    try:
        await wait_until(lambda: len(holders()) == 1)
        await asyncio.sleep(TTL * 1.2)  # through an extension and several tries of the others
        [first] = holders()
        assert await aredis.get(SCHEDULE_LOCK_KEY) == schedulers[first].lock.token.encode()

        # The holder stops: it releases the lock, and another one takes it at its next try.
        stops[first].set()
        await tasks[first]
        started = time.monotonic()
        await wait_until(lambda: len(holders()) == 1)
        assert time.monotonic() - started < TTL / 2
        [second] = holders()
        assert second != first

        # The new holder dies: no release, no more extensions. The last one waits for the TTL to run out.
        async def no_release() -> None:
            return None

        monkeypatch.setattr(schedulers[second].lock, "release", no_release)
        tasks[second].cancel()
        died = time.monotonic()
        await asyncio.sleep(0.05)
        schedulers[second].lock._valid_until = 0.0  # its memory is gone with the process
        [third] = {0, 1, 2} - {first, second}
        await wait_until(lambda: schedulers[third].lock.held, timeout=TTL * 3)
        assert TTL * 0.4 < time.monotonic() - died < TTL * 1.5
    finally:
        for stop in stops:
            stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert await aredis.get(SCHEDULE_LOCK_KEY) is None


async def test_a_scheduler_that_does_not_hold_the_lock_queues_nothing(
    aredis: aioredis.Redis, queue: JobQueue, pool: AsyncConnectionPool[Any], config_ids: list[int]
) -> None:
    await aredis.set(SCHEDULE_LOCK_KEY, "someone else", px=60_000)
    scheduler = Scheduler(aredis, queue, fixed({config_ids[0]: ALL_TASKS}), lock_ttl=TTL)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    await asyncio.sleep(TTL / 2)
    stop.set()
    await task
    assert await queued(pool) == []
    assert await aredis.get(SCHEDULE_LOCK_KEY) == b"someone else"


# --- each period once, debounce


async def test_two_holders_racing_queue_each_task_once_per_period(
    aredis: aioredis.Redis, pool: AsyncConnectionPool[Any], config_ids: list[int]
) -> None:
    schedule = {config_id: ALL_TASKS for config_id in config_ids}
    schedule[999_999] = ALL_TASKS  # a config deleted meanwhile: nothing to run
    racers = [
        Scheduler(aredis, JobQueue(pool), fixed(schedule), lock_ttl=TTL),
        Scheduler(aredis, JobQueue(pool), fixed(schedule), lock_ttl=TTL),
    ]
    noon = datetime(2024, 5, 6, 12, 0, tzinfo=UTC)
    counts = await asyncio.gather(*(racer.fire(noon) for racer in racers for _ in range(3)))
    assert sum(counts) == 6
    assert await queued(pool) == [
        (config_id, name, noon, "waiting")
        for config_id in config_ids
        for name in ("runEveryHour", "runEveryMinute")
    ]

    async with pool.connection() as connection:  # the runs are done; the same period again queues nothing
        await connection.execute("DELETE FROM plugin_server_jobs")
    assert await racers[1].fire(noon + timedelta(seconds=30)) == 0
    assert await racers[0].fire(noon + timedelta(minutes=1)) == 3


async def test_a_task_still_pending_or_running_is_not_queued_again(
    aredis: aioredis.Redis, queue: JobQueue, pool: AsyncConnectionPool[Any], config_ids: list[int]
) -> None:
    slow, quick = config_ids[0], config_ids[1]
    scheduler = Scheduler(
        aredis, queue, fixed({slow: ["runEveryMinute"], quick: ["runEveryMinute"]}), lock_ttl=TTL
    )
    start = datetime(2024, 5, 6, 12, 1, tzinfo=UTC)

    def minute(n: int) -> datetime:
        return start + timedelta(minutes=n)

    assert await scheduler.fire(minute(0)) == 2
    assert await scheduler.fire(minute(1)) == 0  # both still waiting

    release = asyncio.Event()

    async def handler(job: PluginJob) -> None:
        if job.plugin_config_id == slow:
            await release.wait()

    stop = asyncio.Event()
    runner = asyncio.create_task(queue.run_forever(handler, stop_event=stop))
    try:
        await wait_until_async(lambda: queued(pool), [(slow, "runEveryMinute", minute(0), "running")])
        assert await scheduler.fire(minute(2)) == 1  # the quick one only
        release.set()
        await wait_until_async(lambda: queued(pool), [])
        assert await scheduler.fire(minute(3)) == 2
    finally:
        release.set()
        stop.set()
        await runner


async def wait_until_async(read: Callable[[], Any], expected: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while (value := await read()) != expected:
        assert time.monotonic() < deadline, f"{value} != {expected}"
        await asyncio.sleep(0.02)


async def test_only_the_tasks_a_config_exports_are_queued(
    aredis: aioredis.Redis, queue: JobQueue, pool: AsyncConnectionPool[Any], config_ids: list[int]
) -> None:
    scheduler = Scheduler(
        aredis, queue, fixed({config_ids[0]: ["runEveryDay"], config_ids[1]: ["runEveryHour"]}), lock_ttl=TTL
    )
    assert await scheduler.fire(datetime(2024, 5, 6, 13, 0, tzinfo=UTC)) == 1
    assert [row[:2] for row in await queued(pool)] == [(config_ids[1], "runEveryHour")]
