"""Garbage collector settings for the long-running processes.

A micro-batch allocates hundreds of thousands of short-lived containers (decoded events, their property
dicts, rows). With CPython's default threshold (700 allocations) the collector runs hundreds of times a
batch, and each full collection walks every object the process imported at start-up. Profiles put 15-20 %
of a worker's CPU there. So: once start-up is done, the objects alive are moved out of the collector's
sight (`gc.freeze`), and the youngest generation is collected every 50,000 allocations instead.
Reference cycles are still collected; only less often, which bounds the garbage they can hold.
"""

from __future__ import annotations

import gc

YOUNG_GENERATION_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Freeze what start-up allocated and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)
