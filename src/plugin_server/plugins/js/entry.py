"""Calling the runtime's `run` entry with a request as its `this` (a string), through mini-racer.

mini-racer's public `JSFunction.cancelable()(...)` first builds its arguments array with an eval that
blocks the calling thread until the isolate is free (and would freeze the event loop behind an
isolate stuck in a promise continuation). Here the request is handed over as `this`, whose value
mini-racer keeps in C++ until V8 makes a string of it on the isolate's own thread, inside the call,
with the same cancelable task as `eval_cancelable` (so termination and the watchdog work alike); the
arguments array is one empty array made once. The string is an ordinary heap string, garbage once the
request is parsed. This uses mini-racer's internals (pinned below 0.15 in pyproject.toml).
"""

from __future__ import annotations

from typing import Any

from py_mini_racer import JSArray, JSFunction, MiniRacer
from py_mini_racer._objects import _MiniRacerTypes


class RunEntry:
    """`function.call(text)` with no arguments, in `racer`'s isolate."""

    def __init__(self, racer: MiniRacer, function: JSFunction, no_arguments: JSArray) -> None:
        context = racer._ctx
        assert context is not None
        self._context = context
        self._function = function
        self._no_arguments = no_arguments

    async def call(self, text: bytes) -> Any:
        """The function's value, given UTF-8 `text` as its `this` (a primitive in strict code)."""
        context = self._context
        dll = context._dll
        this = context._wrap_raw_handle(
            dll.mr_alloc_string_val(context._ctx, text, len(text), _MiniRacerTypes.str_utf8)
        )
        return await context._run_cancelable_mr_task(
            dll.mr_call_function,
            self._function.raw_handle.raw,  # type: ignore[attr-defined]
            this.raw,
            self._no_arguments.raw_handle.raw,  # type: ignore[attr-defined]
        )
