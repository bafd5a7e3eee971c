"""Garbage collector settings for the long-running processes.

A micro-batch allocates hundreds of thousands of short-lived containers (decoded events, their property
dicts, rows). With CPython's default threshold (700 allocations) the collector runs hundreds of times a
batch, and each full collection walks every object the process imported at start-up. Profiles put 15-20 %
of a worker's CPU there. So: once start-up is done, the objects alive are moved out of the collector's
sight (`gc.freeze`), and the youngest generation is collected every 200,000 allocations instead.

The count is of containers allocated and not yet freed, so a worker's own working set, ten micro-batches
of a thousand events in flight, crossed a lower threshold again and again, each collection walking
objects that were all alive: at 50,000, the two workers of a server storing 100,000 Celery events with
a JavaScript plugin made 5 collections (93 ms, 0.9 µs per event), the pipeline in one process 13 (1.7
µs per event); at 200,000 neither made any (benchmarks/README.md, "2026-12-05, late"). Reference
cycles are still collected, once 200,000 containers more than were freed have been made: that bounds
the garbage they can hold (trusted Python plugins that make a cycle per event hold that many at most).
"""

from __future__ import annotations

import gc

YOUNG_GENERATION_THRESHOLD = 200_000


def tune_garbage_collector() -> None:
    """Freeze what start-up allocated and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)
