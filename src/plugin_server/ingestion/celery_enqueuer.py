"""Captured events onto the Celery Redis list, as `process_event_with_plugins` tasks."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from plugin_server.ingestion.celery import PROCESS_EVENT_TASK, encode_task
from plugin_server.ingestion.enqueue import CapturedEvent


class CeleryEnqueuer:
    """LPUSHes one task per event, all of a request in one command, so they arrive in order or not at all.

    The uuid travels inside `data`, where the worker's `event_from_task` takes it from.
    """

    def __init__(self, redis: aioredis.Redis, queue: str) -> None:
        self._redis = redis
        self._queue = queue

    async def enqueue(self, events: Sequence[CapturedEvent]) -> None:
        if not events:
            return
        messages = [
            encode_task(PROCESS_EVENT_TASK, celery_arguments(event), queue=self._queue, task_id=event.uuid)
            for event in events
        ]
        await self._redis.lpush(self._queue, *messages)

    async def close(self) -> None:
        """Nothing to release: the Redis client belongs to whoever created this enqueuer."""


def celery_arguments(event: CapturedEvent) -> list[object]:
    """The task's positional arguments `[distinct_id, ip, site_url, data, team_id, now, sent_at]`."""
    data = {**event.data, "uuid": event.uuid}
    return [event.distinct_id, event.ip, event.site_url, data, event.team_id, event.now, event.sent_at]
