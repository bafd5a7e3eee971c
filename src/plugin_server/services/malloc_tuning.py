"""glibc's allocator in a worker process: few arenas, and free memory given back to the system.

By default glibc gives each thread that allocates an arena of its own (up to 8 per core), and memory freed
in an arena stays mapped and resident for that arena's later use. A worker has a dozen threads (V8's for
the JavaScript plugins, the Kafka client's, the executor's), so a catch-up after a fault, which handles
batches of up to 500 events at once, leaves tens of megabytes free but resident, spread over arenas that
the next catch-up may not reuse. The worker therefore limits itself to `ARENA_MAX` arenas before it starts
its threads, and hands its free pages back (`malloc_trim`) every `TRIM_INTERVAL_SECONDS`. Both are a
no-op on another C library (musl, macOS), where the functions do not exist.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools

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


def give_back_free_memory() -> bool:
    """Return the free pages of every arena to the system; True if some were."""
    libc = _glibc()
    return libc is not None and libc.malloc_trim(0) == 1


async def give_back_free_memory_forever(interval: float = TRIM_INTERVAL_SECONDS) -> None:
    """`give_back_free_memory` every `interval` seconds (a few milliseconds each, on the event loop)."""
    while True:
        await asyncio.sleep(interval)
        give_back_free_memory()
