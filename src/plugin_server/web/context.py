"""What the web app's routes share: settings, database pool, Redis, the enqueuer, the readers of stored
events and logs, supervisor status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from fastapi import Request
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings
from plugin_server.ingestion.enqueue import EventEnqueuer
from plugin_server.reads import Reads
from plugin_server.web.health import WorkerStatus


@dataclass
class WebContext:
    settings: Settings
    pool: AsyncConnectionPool[Any]
    redis: aioredis.Redis
    enqueuer: EventEnqueuer
    # What the supervisor says about the workers; None when the app runs without a supervisor.
    workers: WorkerStatus | None = None
    # Where events and plugin logs are read back (topology.open_reads).
    reads: Reads = field(kw_only=True)


def get_context(request: Request) -> WebContext:
    """FastAPI dependency: the context the app was created with (`app.state.context`)."""
    context: WebContext = request.app.state.context
    return context
