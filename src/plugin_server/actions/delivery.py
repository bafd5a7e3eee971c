"""Delivering hooks from the job queue, so that a slow or failing receiver never holds up ingestion.

Each worker runs hook jobs with a runner of their own (HOOK_CONCURRENCY at once), so hooks and plugin
jobs never wait for each other's slots.

A hook job (kind 'hook') carries the finished request: target URL and JSON body. Delivery posts it with
a timeout. A timeout, a connection error, 408, 429 or a 5xx answer is tried again later, with a delay
that doubles each attempt, up to HOOK_MAX_ATTEMPTS attempts; then, or on any other 4xx, the job fails
(kept as 'failed' in plugin_server_jobs with the error, logged and counted). A REST hook answered with
410 Gone is deleted, as the original did.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import httpx
from psycopg_pool import AsyncConnectionPool

from plugin_server.jobs.queue import JobQueue, PluginJob
from plugin_server.services.metrics import get_metrics

log = logging.getLogger(__name__)

WEBHOOK = "webhook"  # a team's Slack, Discord or Teams incoming webhook
REST_HOOK = "rest_hook"  # an ee_hook row (Zapier)
_RETRY_STATUSES = frozenset({408, 429})


class HookDeliveryFailed(Exception):
    """The hook could not be delivered and will not be tried again."""


def hook_job(kind: str, team_id: int, payload: dict[str, Any]) -> PluginJob:
    """A job delivering `payload` (`url`, `body`, and `hook_id` for REST hooks) now, first attempt."""
    return PluginJob(
        type=kind,
        payload={**payload, "attempt": 1},
        plugin_config_id=0,
        plugin_config_team=team_id,
        run_at=datetime.now(UTC),
        kind="hook",
    )


class HookDelivery:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        jobs: JobQueue,
        *,
        timeout: float,
        max_attempts: int,
        retry_delay: float,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._pool = pool
        self._jobs = jobs
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        # Operator-configured targets, so a plain client; never redirected to somewhere else.
        self._client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def deliver(self, job: PluginJob) -> None:
        payload = job.payload
        kind, attempt = job.type, int(payload.get("attempt", 1))
        try:
            response = await self._client.post(
                payload["url"], content=payload["body"], headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as error:
            await self._retry_or_fail(job, attempt, f"{type(error).__name__}: {error}")
            return
        status = response.status_code
        if kind == REST_HOOK and status == 410:
            await self._delete_rest_hook(str(payload.get("hook_id")))
            get_metrics().hook_delivery(kind, "gone")
        elif 200 <= status < 300:
            get_metrics().hook_delivery(kind, "delivered")
        elif status >= 500 or status in _RETRY_STATUSES:
            await self._retry_or_fail(job, attempt, f"HTTP {status}")
        else:
            self._failed(job, f"HTTP {status}; not tried again")

    async def _retry_or_fail(self, job: PluginJob, attempt: int, reason: str) -> None:
        if attempt >= self._max_attempts:
            self._failed(job, f"{reason} (attempt {attempt} of {self._max_attempts})")
        delay = self._retry_delay * 2 ** (attempt - 1)
        log.warning(
            "%s to %s failed (%s); attempt %d in %.0fs", job.type, _host(job), reason, attempt + 1, delay
        )
        await self._jobs.enqueue(
            replace(
                job,
                payload={**job.payload, "attempt": attempt + 1},
                run_at=datetime.now(UTC) + timedelta(seconds=delay),
            )
        )
        get_metrics().hook_delivery(job.type, "retried")

    def _failed(self, job: PluginJob, reason: str) -> NoReturn:
        get_metrics().hook_delivery(job.type, "failed")
        log.error("%s to %s of team %s failed: %s", job.type, _host(job), job.plugin_config_team, reason)
        raise HookDeliveryFailed(reason)

    async def _delete_rest_hook(self, hook_id: str) -> None:
        async with self._pool.connection() as connection:
            await connection.execute("DELETE FROM ee_hook WHERE id = %s", (hook_id,))
        log.info("REST hook %s answered 410 Gone: deleted", hook_id)

    async def aclose(self) -> None:
        await self._client.aclose()


def _host(job: PluginJob) -> str:
    """The target's host only: a webhook URL's path is its secret."""
    return httpx.URL(str(job.payload.get("url", ""))).host or "?"
