"""Captured events onto the Celery Redis list, as `process_event_with_plugins` tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import redis.asyncio as aioredis

from plugin_server.ingestion.celery import PROCESS_EVENT_TASK, TaskEncoder
from plugin_server.ingestion.enqueue import CapturedEvent


class CeleryEnqueuer:
    """LPUSHes one task per event. The events of concurrent requests that arrive while a push is
    being prepared go in the same LPUSH (one Redis round trip for many requests), each request's in
    order and all or nothing: a request returns once the command that carried its events succeeded.

    The uuid travels inside `data`, where the worker's `event_from_task` takes it from.
    """

    def __init__(self, redis: aioredis.Redis, queue: str) -> None:
        self._redis = redis
        self._queue = queue
        self._encoder = TaskEncoder(PROCESS_EVENT_TASK, queue)
        self._waiting: list[tuple[list[bytes], asyncio.Future[None]]] = []
        self._pushes: set[asyncio.Task[None]] = set()  # referenced until done (asyncio keeps weak ones)

    async def enqueue(self, events: Sequence[CapturedEvent]) -> None:
        if not events:
            return
        encode = self._encoder.encode
        messages = [encode(celery_arguments(event), None, event.uuid) for event in events]
        loop = asyncio.get_running_loop()
        pushed: asyncio.Future[None] = loop.create_future()
        if not self._waiting:  # the push starts at the loop's next turn: requests until then join it
            push = loop.create_task(self._push())
            self._pushes.add(push)
            push.add_done_callback(self._pushes.discard)
        self._waiting.append((messages, pushed))
        await pushed

    async def _push(self) -> None:
        waiting, self._waiting = self._waiting, []
        try:
            await self._redis.lpush(
                self._queue, *(message for messages, _ in waiting for message in messages)
            )
        except BaseException as error:
            for _, pushed in waiting:
                if not pushed.done():
                    pushed.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for _, pushed in waiting:
            if not pushed.done():
                pushed.set_result(None)

    async def close(self) -> None:
        """Nothing to release: the Redis client belongs to whoever created this enqueuer."""


def celery_arguments(event: CapturedEvent) -> tuple[object, ...]:
    """The task's positional arguments `[distinct_id, ip, site_url, data, team_id, now, sent_at]`."""
    return event[:7]
