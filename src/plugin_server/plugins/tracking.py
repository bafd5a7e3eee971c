"""Knowing which plugin code holds a worker's event loop, so a runaway plugin can be stopped.

An async plugin call gets TASK_TIMEOUT through asyncio. A plugin stuck in CPU (a sync `while True`,
or an async function that never awaits) blocks the whole loop, so nothing inside the worker can stop
it. Before each step of plugin code runs, the worker writes "plugin config C on event U since T" into
memory shared with the supervisor. The supervisor sees a step older than TASK_TIMEOUT, remembers
(config, event) in Redis as hung, and replaces the worker. The new worker redelivers the batch and,
seeing the mark, skips that plugin for that event: the event is stored without its change, and the
loop is not entered again.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import time
from collections.abc import Awaitable, Generator, Iterable
from multiprocessing.sharedctypes import Synchronized
from typing import Any, TypeVar

import redis.asyncio as aioredis

T = TypeVar("T")

LABEL_SIZE = 128
HUNG_KEY_PREFIX = "plugin-server:hung:"
HUNG_MARK_TTL_SECONDS = 7 * 24 * 3600


SETUP_LABEL = "setupPlugin"


def hung_key(plugin_config_id: int) -> str:
    """Redis set of the calls (labels) on which this plugin config was stopped for running too long."""
    return f"{HUNG_KEY_PREFIX}{plugin_config_id}"


def on_event_label(event_uuid: str) -> str:
    return f"onEvent:{event_uuid}"


def job_label(job_type: str) -> str:
    return f"job:{job_type}"


class HungMarks:
    """The worker's side of the hung-call records the supervisor writes to Redis."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def of(self, plugin_config_id: int) -> frozenset[str]:
        return (await self.of_many([plugin_config_id]))[plugin_config_id]

    async def of_many(self, plugin_config_ids: Iterable[int]) -> dict[int, frozenset[str]]:
        """The marks of each of these plugin configs, in one round trip (a batch asks for all its plugins)."""
        ids = list(dict.fromkeys(plugin_config_ids))
        if not ids:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for plugin_config_id in ids:
                pipe.smembers(hung_key(plugin_config_id))
            answers: list[set[bytes]] = await pipe.execute()
        return {
            plugin_config_id: frozenset(member.decode() for member in members)
            for plugin_config_id, members in zip(ids, answers, strict=True)
        }

    async def take(self, plugin_config_id: int, label: str) -> bool:
        """Whether this call was marked hung; the mark is removed (the next attempt may run again)."""
        removed: int = await self._redis.srem(hung_key(plugin_config_id), label)
        return removed > 0


class SharedCallState:
    """The shared memory itself: created by the supervisor, handed to a worker process."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.started_at: Synchronized[float] = context.Value(ctypes.c_double, 0.0, lock=False)  # type: ignore[assignment]
        # A c_char array: `.value` reads and writes it as NUL-terminated bytes.
        self.label: Any = context.Array(ctypes.c_char, LABEL_SIZE, lock=False)

    def running_for(self) -> float:
        started = self.started_at.value
        return time.monotonic() - started if started else 0.0

    def current(self) -> tuple[int, str] | None:
        """(plugin config id, event uuid) of the plugin step running now, if any."""
        if not self.started_at.value:
            return None
        config, _, event = self.label.value.decode(errors="replace").partition(":")
        return (int(config), event) if config.isdigit() else None


class CallTracker:
    """The worker's side: marks plugin code as running (cheap enough to call per event)."""

    def __init__(self, state: SharedCallState | None) -> None:
        self._state = state

    def enter(self, plugin_config_id: int, event_uuid: str) -> None:
        if self._state is not None:
            self._state.label.value = f"{plugin_config_id}:{event_uuid}".encode()[:LABEL_SIZE]
            self._state.started_at.value = time.monotonic()

    def leave(self) -> None:
        if self._state is not None:
            self._state.started_at.value = 0.0

    def track(self, awaitable: Awaitable[T], plugin_config_id: int, event_uuid: str) -> Awaitable[T]:
        """Wrap an awaitable so that each of its steps is marked, and the time between steps is not."""
        if self._state is None:
            return awaitable
        return _Tracked(awaitable, self, plugin_config_id, event_uuid)


class _Tracked(Awaitable[T]):
    def __init__(self, inner: Awaitable[T], tracker: CallTracker, config_id: int, event_uuid: str) -> None:
        self._inner = inner
        self._tracker = tracker
        self._config_id = config_id
        self._event_uuid = event_uuid

    def __await__(self) -> Generator[Any, Any, T]:
        steps = self._inner.__await__()
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            self._tracker.enter(self._config_id, self._event_uuid)
            try:
                yielded = steps.throw(thrown) if thrown is not None else steps.send(sent)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            finally:
                self._tracker.leave()
            try:
                sent, thrown = (yield yielded), None
            except BaseException as error:  # delivered into the plugin's coroutine, e.g. cancellation
                sent, thrown = None, error
