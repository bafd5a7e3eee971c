"""The seed's way of firing hooks: a Celery task per event to PostHog's own worker (CELERY_DEFAULT_QUEUE),
for a PostHog whose Django app still delivers webhooks (ACTION_HOOKS_VIA_CELERY).

As in the seed, every event of a team that has a Slack/Discord/Teams webhook or an `action_performed`
REST hook is sent, matched or not (Django matches the actions itself):
`posthog.tasks.webhooks.post_event_to_webhook(event_id, site_url)` when events are stored in Postgres,
`ee.tasks.webhooks_ee.post_event_to_webhook_ee({event, properties, distinct_id, timestamp,
elements_chain}, team_id, site_url)` when they go to ClickHouse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.ingestion.celery import encode_task
from plugin_server.ingestion.elements import elements_to_chain
from plugin_server.ingestion.rules import format_clickhouse_timestamp
from plugin_server.ingestion.types import PreparedEvent
from plugin_server.services.metrics import get_metrics

POSTGRES_TASK = "posthog.tasks.webhooks.post_event_to_webhook"
CLICKHOUSE_TASK = "ee.tasks.webhooks_ee.post_event_to_webhook_ee"

_EVENT_IDS = """
SELECT e.id, e.uuid::text AS uuid FROM unnest(%s::int[], %s::uuid[]) AS k(team_id, uuid)
JOIN posthog_event e ON e.team_id = k.team_id AND e.uuid = k.uuid
"""


class CeleryHookTasks:
    def __init__(
        self, redis: aioredis.Redis, pool: AsyncConnectionPool[Any], queue: str, *, postgres: bool
    ) -> None:
        self._redis = redis
        self._pool = pool
        self._queue = queue
        self._postgres = postgres

    async def send(self, events: Sequence[PreparedEvent]) -> None:
        """Send the task of each of these events (of teams with hooks)."""
        if not events:
            return
        if self._postgres:
            messages = await self._postgres_tasks(events)
        else:
            messages = [
                encode_task(
                    CLICKHOUSE_TASK,
                    [
                        {
                            "event": event.event,
                            "properties": event.properties,
                            "distinct_id": event.distinct_id,
                            "timestamp": format_clickhouse_timestamp(event.timestamp),
                            "elements_chain": elements_to_chain(event.elements),
                        },
                        event.team_id,
                        event.site_url,
                    ],
                    queue=self._queue,
                )
                for event in events
            ]
        if messages:
            await self._redis.lpush(self._queue, *messages)
            get_metrics().hook_delivery("celery", "queued_celery", len(messages))

    async def _postgres_tasks(self, events: Sequence[PreparedEvent]) -> list[bytes]:
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                _EVENT_IDS, ([event.team_id for event in events], [event.uuid for event in events])
            )
            ids = {row["uuid"]: row["id"] for row in await cursor.fetchall()}
        return [  # uuids are checked at ingestion: hyphenated hex, possibly upper-case
            encode_task(POSTGRES_TASK, [ids[event.uuid.lower()], event.site_url], queue=self._queue)
            for event in events
            if event.uuid.lower() in ids
        ]
