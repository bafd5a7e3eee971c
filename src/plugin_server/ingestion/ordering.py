"""Keeps concurrently processed micro-batches in claim order where order matters (the person step).

A worker works on up to TASKS_PER_WORKER batches at once. Decoding, plugins and lookups may overlap
freely, but person updates must happen in the order events arrived. Persons belong to a team, so the
order is kept per team: each batch takes a ticket when it is claimed, declares its teams once it has
decoded its messages (in ticket order), and before its person step for some teams waits until the
earlier batches with those teams are finished with them. A batch may finish its teams at different
times: a team whose plugins are slow is set aside and finished later (see batches.py), and only the
later batches of that same team wait for it. A batch decides which of its teams it sets aside after
the earlier batches with those teams decided theirs, so that it knows whether it is behind one.

Acknowledgements keep the same order per team, apart from the person step: a batch hands the person
turn on once its person step is done, and acknowledges its teams only after the earlier batches with
those teams acknowledged theirs (or gave up). So if a worker dies, what it acknowledged of a team is
always everything up to some batch, and what comes back is redelivered after it: a redelivered batch
never runs its person step again after a later batch's that was already acknowledged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable


class _Hold:
    """One batch's hold on one team: done once the batch finished that team and so did every earlier
    holder of it (so finishing early never lets a later batch overtake an earlier one)."""

    __slots__ = ("decided", "done", "late", "previous")

    def __init__(self, previous: _Hold | None) -> None:
        self.previous = previous
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()
        self.decided: asyncio.Future[None] = loop.create_future()  # whether `late` is known
        self.late = False

    def decide(self) -> None:
        if not self.decided.done():
            self.decided.set_result(None)

    def release(self) -> None:
        self.decide()

        def settle(_: object = None) -> None:
            if not self.done.done():
                self.previous = None  # the chain behind a finished hold is not needed any more
                self.done.set_result(None)

        if self.previous is None or self.previous.done.done():
            settle()
        else:
            self.previous.done.add_done_callback(settle)

    def behind_late(self) -> bool:
        """Whether an unfinished earlier holder of this team was set aside as late."""
        earlier = self.previous
        while earlier is not None and not earlier.done.done():
            if earlier.late:
                return True
            earlier = earlier.previous
        return False


_ACKNOWLEDGED = object()  # the turnstile key of a team's acknowledgements: (_ACKNOWLEDGED, team)


class Turnstile:
    """Issues tickets in claim order and keeps, per team, which batch holds it last."""

    def __init__(self) -> None:
        self._last_declared: asyncio.Future[None] | None = None
        self._holders: dict[Hashable, _Hold] = {}

    def ticket(self) -> Turn:
        turn = Turn(self, self._last_declared)
        self._last_declared = turn._declared
        return turn

    def _hold(self, key: Hashable) -> _Hold:
        hold = _Hold(self._holders.get(key))
        self._holders[key] = hold
        hold.done.add_done_callback(lambda _: self._forget(key, hold))
        return hold

    def _forget(self, key: Hashable, hold: _Hold) -> None:
        if self._holders.get(key) is hold:
            del self._holders[key]


class Turn:
    """One batch's place in line.

    `declare(keys)` (once; later calls are ignored) takes the batch's place for those keys after every
    earlier ticket declared its own. `wait(keys)` returns once the earlier batches are finished with
    those keys; `finish(keys)` lets the next ones through (safe to call more than once, and without
    waiting first). Keys default to all of the batch's keys not set aside with `set_aside`; a batch
    that finishes without declaring declares nothing, so it holds nobody up."""

    def __init__(self, turnstile: Turnstile, previous: asyncio.Future[None] | None) -> None:
        self._turnstile = turnstile
        self._previous = previous
        self._declared: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._holds: dict[Hashable, _Hold] = {}
        self._acknowledgements: dict[Hashable, _Hold] = {}
        self._aside: set[Hashable] = set()

    async def declare(self, keys: Iterable[Hashable]) -> None:
        if self._declared.done():
            return
        if self._previous is not None:
            await asyncio.shield(self._previous)
        if not self._declared.done():
            self._holds = {key: self._turnstile._hold(key) for key in dict.fromkeys(keys)}
            self._acknowledgements = {key: self._turnstile._hold((_ACKNOWLEDGED, key)) for key in self._holds}
            self._declared.set_result(None)

    def behind_late(self, key: Hashable) -> bool:
        """Whether this batch's turn for `key` waits on an earlier batch that set `key` aside."""
        hold = self._holds.get(key)
        return hold is not None and hold.behind_late()

    async def earlier_decided(self) -> None:
        """Wait until the earlier batches holding this batch's keys decided what they set aside."""
        earlier = [
            hold.previous.decided
            for hold in self._holds.values()
            if hold.previous is not None and not hold.previous.done.done()
        ]
        if earlier:
            await asyncio.gather(*(asyncio.shield(decided) for decided in earlier))

    def set_aside(self, keys: Iterable[Hashable]) -> None:
        """Mark these keys as finished later, on their own (`finish()` without keys leaves them); the
        batch's decision is then made, for all its keys."""
        for key in keys:
            if key in self._holds:
                self._holds[key].late = True
                self._aside.add(key)
        for hold in self._holds.values():
            hold.decide()

    async def wait(self, keys: Iterable[Hashable] | None = None) -> None:
        await self._after_earlier(self._holds, keys)

    async def wait_to_acknowledge(self, keys: Iterable[Hashable] | None = None) -> None:
        """Wait until the earlier batches with these keys acknowledged them (or gave up on it)."""
        await self._after_earlier(self._acknowledgements, keys)

    def acknowledged(self, keys: Iterable[Hashable] | None = None) -> None:
        """Let the next batches with these keys acknowledge theirs (call it whatever the outcome)."""
        for key in self._keys(keys):
            hold = self._acknowledgements.get(key)
            if hold is not None:
                hold.release()

    async def _after_earlier(self, holds: dict[Hashable, _Hold], keys: Iterable[Hashable] | None) -> None:
        wanted = self._keys(keys)
        earlier = [
            hold.previous.done for key, hold in holds.items() if key in wanted and hold.previous is not None
        ]
        if earlier:
            await asyncio.gather(*(asyncio.shield(done) for done in earlier))

    async def finish(self, keys: Iterable[Hashable] | None = None) -> None:
        if not self._declared.done():  # never declared (it failed first): let later tickets declare
            if self._previous is not None:
                self._previous.add_done_callback(lambda _: self._close())
            else:
                self._close()
        for key in self._keys(keys):
            hold = self._holds.get(key)
            if hold is not None:
                hold.release()

    def _close(self) -> None:
        if not self._declared.done():
            self._declared.set_result(None)

    def _keys(self, keys: Iterable[Hashable] | None) -> set[Hashable]:
        return set(self._holds).difference(self._aside) if keys is None else set(keys)
