"""What /_ready says about the workers, from the status the supervisor shares."""

from __future__ import annotations

import time

from plugin_server.web.health import WorkerCounts, WorkerStatus, sources_check, workers_problem


def test_published_counts_are_read_back() -> None:
    status = WorkerStatus()
    status.publish(expected=2, alive=2, consuming=1)
    counts = status.read()
    assert (counts.expected, counts.alive, counts.consuming) == (2, 2, 1)
    assert time.time() - counts.updated_at < 5


def test_workers_problem() -> None:
    now = 1000.0
    assert workers_problem(WorkerCounts(2, 2, 2, now), now) is None
    assert workers_problem(WorkerCounts(2, 1, 1, now), now) == "1 of 2 workers are not running"
    assert workers_problem(WorkerCounts(2, 2, 0, now), now) == "2 of 2 workers are not consuming"
    assert workers_problem(WorkerCounts(0, 0, 0, now), now) == "no workers started yet"
    assert "supervisor" in (workers_problem(WorkerCounts(2, 2, 2, now - 60), now) or "")


def test_sources_check() -> None:
    def check(lag: int, max_lag: int | None, kafka: bool = True) -> dict[str, object]:
        counts = WorkerCounts(1, 1, 1, 0.0, kafka_lag=lag, celery_depth=3)
        return sources_check(counts, kafka_enabled=kafka, max_lag=max_lag)

    assert check(5, None, kafka=False) == {"ok": True, "celery": {"depth": 3}}
    assert check(10**9, None)["ok"]  # no limit: the lag is reported, never a reason to be unready
    assert check(-1, 0) == {"ok": True, "celery": {"depth": 3}, "kafka": {"lag": None, "max_lag_ready": 0}}
    assert check(0, 0)["ok"] and not check(1, 0)["ok"]


def test_the_lag_and_depth_are_read_back() -> None:
    status = WorkerStatus()
    assert (status.read().kafka_lag, status.read().celery_depth) == (-1, -1)
    status.publish(expected=1, alive=1, consuming=1, kafka_lag=42)
    status.queue_sampled(9)
    assert (status.read().kafka_lag, status.read().celery_depth) == (42, 9)
