"""A job whose runner process is killed with SIGKILL mid-run runs again in another runner."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from plugin_server.jobs.queue import JobQueue, PluginJob

RUNNER = Path(__file__).with_name("job_runner.py")


@pytest.fixture
def runs_table(clean_db: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    clean_db.execute("TRUNCATE plugin_server_jobs")
    clean_db.execute(
        "CREATE TABLE e2e_job_runs (pid integer, event text, payload jsonb, at timestamptz DEFAULT now())"
    )
    try:
        yield clean_db
    finally:
        clean_db.execute("DROP TABLE e2e_job_runs")


@contextlib.contextmanager
def runner(database_url: str, sleep_seconds: float) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, str(RUNNER), database_url, str(sleep_seconds)])
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(10)


def wait_for_run(connection: psycopg.Connection[Any], pid: int, event: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not connection.execute(
        "SELECT 1 FROM e2e_job_runs WHERE pid = %s AND event = %s", (pid, event)
    ).fetchone():
        assert time.monotonic() < deadline, f"no {event} by {pid} within {timeout}s"
        time.sleep(0.05)


async def test_a_job_survives_kill_9_of_its_runner(
    database_url: str, pool: AsyncConnectionPool[Any], runs_table: psycopg.Connection[Any]
) -> None:
    await JobQueue(pool).enqueue(PluginJob("longJob", {"n": 1}, 39, 2, datetime.now(UTC)))

    with runner(database_url, sleep_seconds=60) as first:
        wait_for_run(runs_table, first.pid, "start")
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL

    with runner(database_url, sleep_seconds=0) as second:
        wait_for_run(runs_table, second.pid, "done")

    runs = runs_table.execute("SELECT pid, event, payload FROM e2e_job_runs ORDER BY at").fetchall()
    assert runs == [
        (first.pid, "start", {"n": 1}),
        (second.pid, "start", {"n": 1}),
        (second.pid, "done", {"n": 1}),
    ]
    assert runs_table.execute("SELECT count(*) FROM plugin_server_jobs").fetchone() == (0,)
