"""The one place that creates V8 isolates, so every isolate of the process gets the same V8 flags."""

from __future__ import annotations

from py_mini_racer import MiniRacer, init_mini_racer

# `--expose-gc` lets memory.js collect garbage from inside a script, which runs under the runtime's
# watchdog like any other (MiniRacer.low_memory_notification blocks its caller for as long as the
# isolate is busy, so a plugin stuck in a promise continuation would freeze the worker). memory.js
# takes `gc` off the global object before any plugin code runs.
V8_FLAGS = ("--single-threaded", "--expose-gc")


def new_racer() -> MiniRacer:
    """A new isolate (the V8 flags are set by the first call in the process)."""
    init_mini_racer(flags=V8_FLAGS, ignore_duplicate_init=True)
    return MiniRacer()
