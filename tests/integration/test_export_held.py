"""The export buffer's events held as jobs on a real Postgres (plugins/export.py): written before the
batch is acknowledged, taken back once exported, left to run when the worker dies or its exports are
all still running (the destination hangs)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import psycopg
import pytest
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from plugin_server.jobs.queue import JobQueue
from plugin_server.plugins.export import EXPORT_RETRY_JOB, MAX_EXPORTS_IN_FLIGHT, ExportBuffer, QueuedExports
from plugin_server.plugins.instance import PluginInstance
from plugin_server.plugins.meta.metrics import EXPORT_EVENTS_METRICS, PluginMetrics
from plugin_server.services.metrics import PluginLabels

CONFIG_ID, TEAM_ID = 41, 2


class Destination:
    """exportEvents that records its batches, and waits while `open` is clear (a hanging service)."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.batches: list[list[int]] = []
        self.waiting = 0

    async def export_events(self, events: list[Any]) -> None:
        self.waiting += 1
        await self.open.wait()
        self.waiting -= 1
        self.batches.append([event["properties"]["n"] for event in events])


@pytest.fixture
def queue(clean_db: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]) -> JobQueue:
    return JobQueue(pool, lease_seconds=1.0, poll_interval=0.05)


def buffer_of(destination: Destination, queue: JobQueue) -> ExportBuffer:
    async def no_retry(payload: dict[str, Any], delay: float) -> None:
        raise AssertionError("not retried here")

    async def no_error(error: Exception, **details: Any) -> None:
        raise AssertionError(f"no error expected: {error}")

    return ExportBuffer(
        cast(PluginInstance, destination),
        config={"exportEventsBufferSeconds": "600"},
        metrics=PluginMetrics(EXPORT_EVENTS_METRICS),
        plugin=PluginLabels(CONFIG_ID, "exporter", TEAM_ID),
        schedule_retry=no_retry,
        record_error=no_error,
        held=QueuedExports(queue, CONFIG_ID, TEAM_ID),
        call_seconds=2.0,
    )


def events(*numbers: int) -> list[dict[str, Any]]:
    return [{"event": "e", "properties": {"n": n}} for n in numbers]


async def held_jobs(pool: AsyncConnectionPool[Any]) -> list[tuple[str, str, list[int], int]]:
    """(type, status, event numbers, seconds until due) of each job, oldest first."""
    async with pool.connection() as connection:
        cursor = await connection.cursor(row_factory=tuple_row).execute(
            """SELECT type, status, payload, extract(epoch FROM run_at - now())::int
               FROM plugin_server_jobs ORDER BY id"""
        )
        return [
            (kind, status, [event["properties"]["n"] for event in payload["batch"]], due)
            for kind, status, payload, due in await cursor.fetchall()
        ]


async def test_buffered_events_are_held_as_jobs_until_exported(
    queue: JobQueue, pool: AsyncConnectionPool[Any]
) -> None:
    destination = Destination()
    buffer = buffer_of(destination, queue)
    await buffer.add(events(1, 2))
    await buffer.add(events(3))
    # What a killed worker leaves: a retry job per stored batch, due once it cannot be in memory.
    due = buffer.hold_seconds
    assert due == 600 + 2 * 2.0 + 30
    assert [job[:3] for job in await held_jobs(pool)] == [
        (EXPORT_RETRY_JOB, "waiting", [1, 2]),
        (EXPORT_RETRY_JOB, "waiting", [3]),
    ]
    assert all(due - 5 <= job[3] <= due for job in await held_jobs(pool))
    await buffer.flush()
    assert destination.batches == [[1, 2, 3]]
    assert await held_jobs(pool) == []  # taken back once exported


async def test_a_batch_flushed_while_every_export_hangs_is_left_to_its_jobs(
    queue: JobQueue, pool: AsyncConnectionPool[Any]
) -> None:
    destination = Destination()
    destination.open.clear()  # the service hangs
    buffer = buffer_of(destination, queue)
    for n in range(MAX_EXPORTS_IN_FLIGHT + 1):
        await buffer.add(events(n))
        buffer._flush_in_background()  # the buffer is full or old: flushed
    await asyncio.sleep(0.1)
    assert destination.waiting == MAX_EXPORTS_IN_FLIGHT  # the last batch is in no export call
    assert [job[2] for job in await held_jobs(pool)] == [[n] for n in range(MAX_EXPORTS_IN_FLIGHT + 1)]
    destination.open.set()
    await buffer.flush()
    assert destination.batches == [[n] for n in range(MAX_EXPORTS_IN_FLIGHT)]
    # Not in memory any more: the job queue exports it when its job is due.
    assert [job[:3] for job in await held_jobs(pool)] == [
        (EXPORT_RETRY_JOB, "waiting", [MAX_EXPORTS_IN_FLIGHT])
    ]
