"""Readiness: can this server take events and ingest them right now?

The web runs in its own process, so what it knows about the workers comes from the supervisor
through `WorkerStatus`, shared memory the supervisor rewrites on every watch tick.
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


class WorkerStatus:
    """Worker counts shared between processes (create it before spawning the process that reads it)."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._expected: Synchronized[int] = context.Value("i", 0)
        self._alive: Synchronized[int] = context.Value("i", 0)
        self._consuming: Synchronized[int] = context.Value("i", 0)
        self._updated_at: Synchronized[float] = context.Value("d", 0.0)

    def publish(self, *, expected: int, alive: int, consuming: int) -> None:
        self._expected.value = expected
        self._alive.value = alive
        self._consuming.value = consuming
        self._updated_at.value = time.time()

    def read(self) -> WorkerCounts:
        return WorkerCounts(
            self._expected.value, self._alive.value, self._consuming.value, self._updated_at.value
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


async def run_check(probe: Any) -> str | None:
    """Await `probe` (a coroutine returning None or an error text) with a timeout; errors become text."""
    try:
        result: str | None = await asyncio.wait_for(probe, CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_SECONDS:.0f}s"
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return result
