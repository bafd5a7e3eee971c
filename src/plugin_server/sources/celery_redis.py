"""The Celery-on-Redis source: kombu envelopes on the PLUGINS_CELERY_QUEUE list, claimed through the
reliable queue (ingestion/redis_queue.py), which keeps a batch in Redis until it is acknowledged."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence

import redis.asyncio as aioredis

from plugin_server.ingestion.celery import (
    PLUGIN_JOB_TASK,
    PROCESS_EVENT_TASK,
    CeleryTask,
    event_from_task,
    event_or_task,
)
from plugin_server.ingestion.message_fields import MalformedMessage
from plugin_server.ingestion.redis_queue import ClaimedBatch, ReliableQueue
from plugin_server.ingestion.types import RawEvent
from plugin_server.jobs.celery_task import job_from_celery_task
from plugin_server.jobs.queue import PluginJob
from plugin_server.sources import DeadLetter

log = logging.getLogger(__name__)


class CeleryCodec:
    """`process_event_with_plugins` tasks are events, `plugin_job` tasks are plugin jobs."""

    async def decode(self, message: bytes) -> RawEvent | PluginJob:
        carried = event_or_task(message)
        if not isinstance(carried, CeleryTask):
            return carried  # the raw event of a common event message, made at once
        if carried.name == PLUGIN_JOB_TASK:
            return job_from_celery_task(carried.args)
        if carried.name == PROCESS_EVENT_TASK:
            return event_from_task(carried)
        raise MalformedMessage(f"no handler for Celery task {carried.name!r}")

    def peek(self, message: bytes) -> RawEvent | None:
        try:
            carried = event_or_task(message)
            return event_from_task(carried) if isinstance(carried, CeleryTask) else carried
        except (MalformedMessage, ValueError, TypeError):
            return None


class CelerySource:
    name = "celery"
    codec = CeleryCodec()
    can_split = True

    def __init__(
        self, redis: aioredis.Redis, queue: str, consumer_id: str, *, visibility_timeout: float
    ) -> None:
        self.queue = ReliableQueue(redis, queue, consumer_id, visibility_timeout=visibility_timeout)

    async def start(self) -> None:
        await self.housekeeping()

    async def claim(self, max_count: int, block_timeout: float) -> ClaimedBatch | None:
        return await self.queue.claim(max_count, block_timeout)

    async def ack(self, batch: ClaimedBatch, dead_letters: Sequence[DeadLetter] = ()) -> bool:
        return await self.queue.ack(batch, dead_letters)

    async def split_off(self, batch: ClaimedBatch, messages: Sequence[bytes]) -> ClaimedBatch:
        return await self.queue.split_off(batch, messages)

    async def paused_until(self, room: Awaitable[object]) -> None:
        await room  # claims are pulled from Redis one by one: nothing is fetched ahead

    async def housekeeping(self) -> None:
        await self.queue.heartbeat()
        recovered = await self.queue.recover_abandoned()
        if recovered:
            log.warning("requeued %d unacknowledged messages of stopped consumers", recovered)

    async def close(self) -> None:
        await self.queue.close()
