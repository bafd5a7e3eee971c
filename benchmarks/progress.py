"""A run's pace: how many events were done in each slice of its time, from a count polled as it ran.

A rate over the whole run hides a slow start or a slow end (a stall before the first batch, one worker
left alone with the last ones); the pace shows them as small slices. It found the half second each
worker's first batch waited for TypeScript's compiler to start (benchmarks/README.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """Counts of events done, each with when it was seen (from the progress's creation)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = clock()
        self._marks: list[tuple[float, int]] = []

    def saw(self, count: int) -> int:
        """Record that `count` events are done now; `count` again, for a polling condition."""
        self._marks.append((self._clock() - self._started, count))
        return count

    def pace(self, slice_seconds: float = 0.5) -> list[int]:
        """The events done in each slice of `slice_seconds`, up to the last count seen (by the latest
        count seen in each slice: a poll's resolution)."""
        if not self._marks:
            return []
        slices = int(self._marks[-1][0] // slice_seconds) + 1
        done_by: list[int] = []
        index, latest = 0, 0
        for number in range(1, slices + 1):
            while index < len(self._marks) and self._marks[index][0] <= number * slice_seconds:
                latest = self._marks[index][1]
                index += 1
            done_by.append(latest)
        return [after - before for before, after in zip([0, *done_by], done_by, strict=False)]

    def summary(self, slice_seconds: float = 0.5) -> str:
        """The pace as one line: `pace (events per 0.5 s): 2,000 14,000 ...`."""
        counts = " ".join(f"{count:,}" for count in self.pace(slice_seconds))
        return f"pace (events per {slice_seconds:g} s): {counts}"
