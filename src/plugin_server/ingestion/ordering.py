"""Keeps concurrently processed micro-batches in claim order where order matters (the person step).

A worker works on up to TASKS_PER_WORKER batches at once. Decoding, plugins and lookups may overlap
freely, but person updates must happen in the order events arrived, so each batch takes a ticket
when it is claimed and waits for its turn before its person step.
"""

from __future__ import annotations

import asyncio


class Turnstile:
    """Issues tickets and lets their holders through one at a time, in ticket order."""

    def __init__(self) -> None:
        self._issued = 0
        self._serving = 0
        self._changed = asyncio.Condition()

    def ticket(self) -> Turn:
        turn = Turn(self, self._issued)
        self._issued += 1
        return turn

    async def _wait(self, number: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._serving == number)

    async def _advance(self) -> None:
        async with self._changed:
            self._serving += 1
            self._changed.notify_all()


class Turn:
    """One batch's place in line. `wait()` returns once all earlier turns are finished;
    `finish()` (safe to call more than once, and without waiting first) lets the next one through."""

    def __init__(self, turnstile: Turnstile, number: int) -> None:
        self._turnstile = turnstile
        self._number = number
        self._finished = False

    async def wait(self) -> None:
        await self._turnstile._wait(self._number)

    async def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        await self._turnstile._wait(self._number)
        await self._turnstile._advance()
