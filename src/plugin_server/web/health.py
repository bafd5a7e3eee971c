"""Readiness: can this server take events and ingest them right now?

The web runs in its own process, so what it knows about the workers comes from the supervisor
through `WorkerStatus`, shared memory the supervisor rewrites on every watch tick: the worker counts,
the Celery list's depth (sampled every few seconds) and this server's Kafka consumer lag (the sum over
its workers of the messages waiting in their assigned partitions, as each last sampled it).

The lag makes the server unready only past KAFKA_MAX_LAG_READY (off by default): an unready server is
taken out of its load balancer, which sheds capture traffic, the one thing a backlog does not hinder.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from typing import Any

CHECK_TIMEOUT_SECONDS = 3.0
# The supervisor ticks every 0.2 s: a status this old means the supervisor itself is stuck or gone.
SUPERVISOR_SILENCE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class WorkerCounts:
    expected: int
    alive: int
    consuming: int
    updated_at: float
    kafka_lag: int = -1  # -1: not sampled (yet), or Kafka is not enabled
    celery_depth: int = -1


class WorkerStatus:
    """Worker counts shared between processes (create it before spawning the process that reads it)."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._expected: Synchronized[int] = context.Value("i", 0)
        self._alive: Synchronized[int] = context.Value("i", 0)
        self._consuming: Synchronized[int] = context.Value("i", 0)
        self._updated_at: Synchronized[float] = context.Value("d", 0.0)
        self._kafka_lag: Synchronized[int] = context.Value("q", -1)
        self._celery_depth: Synchronized[int] = context.Value("q", -1)

    def publish(self, *, expected: int, alive: int, consuming: int, kafka_lag: int = -1) -> None:
        self._expected.value = expected
        self._alive.value = alive
        self._consuming.value = consuming
        self._kafka_lag.value = kafka_lag
        self._updated_at.value = time.time()

    def queue_sampled(self, depth: int) -> None:
        self._celery_depth.value = depth

    def read(self) -> WorkerCounts:
        return WorkerCounts(
            self._expected.value,
            self._alive.value,
            self._consuming.value,
            self._updated_at.value,
            self._kafka_lag.value,
            self._celery_depth.value,
        )


def workers_problem(counts: WorkerCounts, now: float | None = None) -> str | None:
    """Why the workers are not fine, or None when every expected worker is alive and consuming."""
    age = (time.time() if now is None else now) - counts.updated_at
    if age > SUPERVISOR_SILENCE_SECONDS:
        return f"no worker status from the supervisor for {age:.0f}s"
    if counts.expected == 0:
        return "no workers started yet"
    if counts.alive < counts.expected:
        return f"{counts.expected - counts.alive} of {counts.expected} workers are not running"
    if counts.consuming < counts.expected:
        return f"{counts.expected - counts.consuming} of {counts.expected} workers are not consuming"
    return None


def sources_check(counts: WorkerCounts, *, kafka_enabled: bool, max_lag: int | None) -> dict[str, Any]:
    """The `sources` entry of /_ready: each source's backlog (None: not sampled yet), and `ok` unless
    the Kafka lag is above `max_lag` (KAFKA_MAX_LAG_READY)."""
    check: dict[str, Any] = {"ok": True, "celery": {"depth": _known(counts.celery_depth)}}
    if kafka_enabled:
        lag = _known(counts.kafka_lag)
        check["kafka"] = {"lag": lag, "max_lag_ready": max_lag}
        if max_lag is not None and lag is not None and lag > max_lag:
            check.update(ok=False, error=f"Kafka consumer lag {lag} is above KAFKA_MAX_LAG_READY ({max_lag})")
    return check


def _known(value: int) -> int | None:
    return value if value >= 0 else None


async def run_check(probe: Any) -> str | None:
    """Await `probe` (a coroutine returning None or an error text) with a timeout; errors become text."""
    try:
        result: str | None = await asyncio.wait_for(probe, CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_SECONDS:.0f}s"
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return result
