"""CPU time of the processes taking part in a benchmark run, per process kind, as µs per event.

Each kind names root processes; a root counts its own user + system time, the time of its children
it has reaped (`children_user`/`children_system`: Postgres backends that ended, for one) and of its
live descendants that are not roots themselves. The benchmark's own process counts its threads only
(`own`), not its children (the server, py-spy, embedded servers it started).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds per kind and per process of that kind over an interval, and the interval's length."""

    seconds: dict[str, list[float]]
    wall: float

    def per_event(self, events: int) -> dict[str, float]:
        """µs of CPU per event of each kind (its processes summed)."""
        return {kind: sum(values) / events * 1e6 for kind, values in self.seconds.items()}

    def summary(self, events: int) -> str:
        """One line: µs per event of each kind (each process's in brackets when a kind has several),
        the total, and how many cores that kept busy on average."""
        parts = []
        for kind, values in self.seconds.items():
            part = f"{kind} {sum(values) / events * 1e6:,.1f}"
            if len(values) > 1:
                part += " (" + " + ".join(f"{value / events * 1e6:,.1f}" for value in values) + ")"
            parts.append(part)
        total = sum(sum(values) for values in self.seconds.values())
        return (
            f"CPU µs/event: {', '.join(parts)}; total {total / events * 1e6:,.1f} "
            f"({total / self.wall:.2f} cores busy)"
        )


class CpuMeter:
    """Samples the CPU time of `kinds` (kind -> root pids) at `start` and `stop`; `own` is the kind
    under which this process's own threads count (None: not at all)."""

    def __init__(self, kinds: Mapping[str, Sequence[int]], own: str | None = None) -> None:
        self._kinds = {kind: list(pids) for kind, pids in kinds.items()}
        self._own = own
        self._roots = {pid for pids in self._kinds.values() for pid in pids} | {os.getpid()}
        self._before: dict[str, list[float]] = {}
        self._started = 0.0

    def start(self) -> None:
        self._started = time.perf_counter()
        self._before = self._sample()

    def stop(self) -> CpuUse:
        after = self._sample()
        wall = time.perf_counter() - self._started
        return CpuUse(
            {
                kind: [end - begin for begin, end in zip(self._before[kind], values, strict=True)]
                for kind, values in after.items()
            },
            wall,
        )

    def _sample(self) -> dict[str, list[float]]:
        sample = {
            kind: [tree_cpu_seconds(pid, self._roots) for pid in pids] for kind, pids in self._kinds.items()
        }
        if self._own:
            times = psutil.Process().cpu_times()
            sample[self._own] = [times.user + times.system]
        return sample


def tree_cpu_seconds(pid: int, stop_at: Collection[int] = ()) -> float:
    """CPU seconds of `pid`, its reaped children and its live descendants, except the subtrees of
    the pids in `stop_at` (0 for a process that is gone)."""
    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        children = process.children()
    except psutil.NoSuchProcess:
        return 0.0
    total = times.user + times.system + times.children_user + times.children_system
    for child in children:
        if child.pid not in stop_at:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += tree_cpu_seconds(child.pid, stop_at)
    return total
