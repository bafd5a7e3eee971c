"""glibc's allocator in a worker process: few arenas, and free memory given back to the system.

By default glibc gives each thread that allocates an arena of its own (up to 8 per core), and memory
freed in an arena stays resident for that arena's later use. A worker has several threads (7 in the soak
benchmark, V8's for the JavaScript plugins among them); after the catch-ups that follow faults its malloc
held 66 MB in 7 arenas, 37-40 MB of it free (benchmarks/README.md, soak). So the worker limits itself to
`ARENA_MAX` arenas before it starts its threads, and hands its free pages back (`malloc_trim`) once
start-up is done and every `TRIM_INTERVAL_SECONDS` after, counting what went in
`plugin_server_memory_given_back_bytes_total`. Both are no-ops on another C library (musl, macOS), where
the functions do not exist.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import resource

from plugin_server.services.metrics import get_metrics

ARENA_MAX = 2
TRIM_INTERVAL_SECONDS = 30.0
M_ARENA_MAX = -8  # glibc's malloc.h


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (it has `mallopt` and `malloc_trim`)."""
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into the process
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = ARENA_MAX) -> bool:
    """At most `arenas` malloc arenas from now on (threads started later share them); True if set."""
    libc = _glibc()
    return libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1


def give_back_free_memory() -> int:
    """Return the free pages of every arena to the system; how much resident memory went, in bytes
    (the drop in the process's resident size around the call)."""
    libc = _glibc()
    if libc is None:
        return 0
    before = _resident_bytes()
    libc.malloc_trim(0)
    return max(0, before - _resident_bytes())


async def give_back_free_memory_forever(interval: float = TRIM_INTERVAL_SECONDS) -> None:
    """`give_back_free_memory` now and every `interval` seconds (milliseconds each, on the event loop)."""
    while True:
        get_metrics().memory_given_back(give_back_free_memory())
        await asyncio.sleep(interval)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()
