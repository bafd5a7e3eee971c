"""Putting accepted events into the active ingestion queue (a Celery Redis list or a Kafka topic).

The HTTP capture API and `posthog.capture` produce; the workers consume. Each event travels in the
shape PostHog's capture endpoint produced: the seven Celery arguments, which are also the fields of
the Kafka message (section 3.2 of the reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import redis.asyncio as aioredis

from plugin_server.config import Settings

if TYPE_CHECKING:
    from plugin_server.ingestion.kafka_producer import KafkaProducer


class CapturedEvent(NamedTuple):
    """One event as capture hands it to ingestion. `data` carries event, properties, timestamp... and
    `uuid` too (the worker merges `data` over the other fields, so data's uuid is the one stored).

    A named tuple: capture makes one per event, and a frozen dataclass costs five times as much to
    make. Its first seven fields are the Celery task's arguments, in their order."""

    distinct_id: str
    ip: str | None
    site_url: str | None
    data: dict[str, Any]
    team_id: int
    now: str
    sent_at: str | None
    uuid: str


class EventEnqueuer(Protocol):
    """Where accepted events go. `enqueue` returns only once every event is durably queued."""

    async def enqueue(self, events: Sequence[CapturedEvent]) -> None: ...

    async def close(self) -> None: ...


def open_enqueuer(
    settings: Settings, redis: aioredis.Redis, producer: KafkaProducer | None = None
) -> EventEnqueuer:
    """The enqueuer of the active ingestion queue: the Kafka topic when KAFKA_ENABLED (over `producer`,
    the worker's one, when given), else the Celery list."""
    if settings.KAFKA_ENABLED:
        from plugin_server.ingestion.kafka_producer import KafkaEnqueuer

        return KafkaEnqueuer(settings, producer)
    from plugin_server.ingestion.celery_enqueuer import CeleryEnqueuer

    return CeleryEnqueuer(redis, settings.PLUGINS_CELERY_QUEUE)
