"""The benchmarks' pace line: events done per slice of a run, from counts polled as it ran."""

from __future__ import annotations

from benchmarks.progress import Progress


def progress_seen(marks: list[tuple[float, int]]) -> Progress:
    now = [0.0]
    progress = Progress(clock=lambda: now[0])
    for at, count in marks:
        now[0] = at
        progress.saw(count)
    return progress


def test_the_pace_counts_what_was_done_in_each_slice() -> None:
    # a slow start (nothing for 0.6 s), then steady, then one last batch alone
    progress = progress_seen([(0.1, 0), (0.6, 0), (0.7, 1000), (0.9, 3000), (1.4, 8000), (2.2, 9000)])
    assert progress.pace(0.5) == [0, 3000, 5000, 0, 1000]
    assert progress.summary(0.5) == "pace (events per 0.5 s): 0 3,000 5,000 0 1,000"


def test_no_count_seen_is_no_pace() -> None:
    assert Progress().pace() == []
