"""Building the actions service and its hook delivery for a worker, from the settings."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.actions.celery_tasks import CeleryHookTasks
from plugin_server.actions.delivery import HookDelivery
from plugin_server.actions.lookups import RestHooks
from plugin_server.actions.service import ActionService
from plugin_server.actions.store import ActionStore
from plugin_server.config import Settings
from plugin_server.ingestion.teams import OrganizationManager, TeamManager
from plugin_server.jobs.queue import JobQueue


@dataclass(frozen=True, slots=True)
class Actions:
    service: ActionService
    delivery: HookDelivery


@contextlib.asynccontextmanager
async def open_actions(
    settings: Settings,
    pool: AsyncConnectionPool[Any],
    redis: aioredis.Redis,
    teams: TeamManager,
    jobs: JobQueue,
    *,
    write_action_events: bool,
) -> AsyncIterator[Actions]:
    """The actions service (actions loaded) and the hook delivery, closed on the way out.

    `write_action_events` is for a Postgres event sink (posthog_action_events rows); a ClickHouse sink
    passes False."""
    store = ActionStore(pool)
    await store.reload_all()
    celery = None
    if settings.ACTION_HOOKS_VIA_CELERY:
        celery = CeleryHookTasks(redis, pool, settings.CELERY_DEFAULT_QUEUE, postgres=write_action_events)
    service = ActionService(
        pool,
        store,
        jobs,
        teams=teams,
        organizations=OrganizationManager(pool),
        rest_hooks=RestHooks(pool),
        write_action_events=write_action_events,
        celery=celery,
    )
    delivery = HookDelivery(
        pool,
        jobs,
        timeout=settings.HOOK_TIMEOUT_SECONDS,
        max_attempts=settings.HOOK_MAX_ATTEMPTS,
        retry_delay=settings.HOOK_RETRY_DELAY_SECONDS,
    )
    try:
        yield Actions(service, delivery)
    finally:
        await delivery.aclose()
