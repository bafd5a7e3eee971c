"""What /_ready says about the workers, from the status the supervisor shares."""

from __future__ import annotations

import time

from plugin_server.web.health import WorkerCounts, WorkerStatus, workers_problem


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
