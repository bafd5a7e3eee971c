"""The one place that creates V8 isolates, so every isolate of the process gets the same V8 flags;
and the runtime's own JavaScript files, read once per process."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from py_mini_racer import MiniRacer, init_mini_racer

# `--expose-gc` lets memory.js collect garbage from inside a script, which runs under the runtime's
# watchdog like any other (MiniRacer.low_memory_notification blocks its caller for as long as the
# isolate is busy, so a plugin stuck in a promise continuation would freeze the worker). memory.js
# takes `gc` off the global object before any plugin code runs.
V8_FLAGS = ("--single-threaded", "--expose-gc")


# V8 starts when this module is imported (on the main thread, which imports it before any thread of
# ours starts). On a CPU with memory protection keys (x86 `pku`) V8 guards its code pages with a key
# that only the thread that started V8, and the threads it starts afterwards, may use: started from
# another thread (the TypeScript compiler's, see transpile.py), every later isolate the main thread
# made crashed the process with a segmentation fault.
init_mini_racer(flags=V8_FLAGS, ignore_duplicate_init=True)


def new_racer() -> MiniRacer:
    """A new isolate, with the process's V8 flags; made on the main thread or a thread started after
    this module was imported (see above)."""
    return MiniRacer()


@cache
def js_source(name: str) -> str:
    """One of our own JS files beside this module (`guards`, `prelude`, `memory`...), without its
    comment lines (left empty, so that line numbers stay) and indentation: V8 keeps the text of every
    script in the isolate's heap while its functions live, and the runtime's are in every isolate.
    (Our files have no template literal, nor string, that goes on to a next line.)"""
    text = (Path(__file__).parent / f"{name}.js").read_text(encoding="utf-8")
    return "\n".join("" if line.lstrip().startswith("//") else line.lstrip() for line in text.split("\n"))
