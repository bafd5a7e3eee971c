"""The Celery enqueuer against a real Redis: concurrent requests share LPUSHes, each all or nothing."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis

from plugin_server.ingestion.celery import decode_message, event_from_task
from plugin_server.ingestion.celery_enqueuer import CeleryEnqueuer
from plugin_server.ingestion.enqueue import CapturedEvent

QUEUE = "posthog-plugins-enqueuer-test"


def captured(request: int, index: int) -> CapturedEvent:
    event_uuid = f"00000000-0000-0000-{request:04x}-{index:012x}"
    return CapturedEvent(
        distinct_id=f"person {request}",
        ip=None,
        site_url=None,
        data={"event": f"request {request} event {index}", "properties": {}, "uuid": event_uuid},
        team_id=2,
        now="2026-11-28T09:00:00+00:00",
        sent_at=None,
        uuid=event_uuid,
    )


@pytest.fixture(autouse=True)
def _empty_queue(redis_client: redis.Redis) -> None:
    redis_client.delete(QUEUE)


def lpush_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats").get("cmdstat_lpush", {"calls": 0})
    return int(stats["calls"])


async def test_concurrent_requests_share_pushes_and_keep_their_order(
    redis_client: redis.Redis, aredis: aioredis.Redis
) -> None:
    enqueuer = CeleryEnqueuer(aredis, QUEUE)
    before = lpush_calls(redis_client)
    await asyncio.gather(
        *(enqueuer.enqueue([captured(request, index) for index in range(3)]) for request in range(50))
    )
    assert lpush_calls(redis_client) - before < 10  # 50 requests, a few round trips
    oldest_first = [
        event_from_task(decode_message(raw))["event"] for raw in reversed(redis_client.lrange(QUEUE, 0, -1))
    ]
    assert len(oldest_first) == 150
    for request in range(50):
        mine = [name for name in oldest_first if name.startswith(f"request {request} ")]
        assert mine == [f"request {request} event {index}" for index in range(3)]


async def test_every_waiting_request_fails_when_the_push_fails() -> None:
    unreachable = aioredis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=1)
    enqueuer = CeleryEnqueuer(unreachable, QUEUE)
    results = await asyncio.gather(
        *(enqueuer.enqueue([captured(request, 0)]) for request in range(5)), return_exceptions=True
    )
    assert all(isinstance(result, redis.ConnectionError) for result in results), results
    await unreachable.aclose()


async def test_an_empty_request_queues_nothing(redis_client: redis.Redis, aredis: aioredis.Redis) -> None:
    await CeleryEnqueuer(aredis, QUEUE).enqueue([])
    assert redis_client.llen(QUEUE) == 0
