"""The services a worker's plugins use, built once (topology.open_plugin_services), and the parts
of a worker's plugin machinery built over them (topology.open_plugins). Each part is handed on by
itself to what needs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from plugin_server.ingestion.enqueue import EventEnqueuer
from plugin_server.ingestion.teams import TeamManager
from plugin_server.jobs.queue import JobQueue
from plugin_server.jobs.scheduler import ScheduleSource
from plugin_server.plugins.capabilities import CapabilityDiscovery
from plugin_server.plugins.historical import StoredEvents
from plugin_server.plugins.job_runner import PluginJobRunner
from plugin_server.plugins.meta.logs import BufferedLogWriter
from plugin_server.plugins.meta.network import ConnectGuard
from plugin_server.plugins.meta.posthog import PersonalApiKeys
from plugin_server.plugins.metrics_report import PluginMetricsReporter
from plugin_server.plugins.registry import PluginRegistry
from plugin_server.plugins.tracking import CallTracker, HungMarks
from plugin_server.services.geoip import GeoIP


@dataclass(frozen=True)
class PluginServices:
    pool: AsyncConnectionPool[Any]
    redis: aioredis.Redis
    http: httpx.AsyncClient  # plugins' fetch, through the egress policy (PLUGIN_HTTP_*)
    posthog_http: httpx.AsyncClient  # posthog.api's: also reaches POSTHOG_API_HOST wherever it is
    connect_guard: ConnectGuard  # where JS plugins' own connections (pg, snowflake-sdk...) may go
    logs: BufferedLogWriter
    jobs: JobQueue
    geoip: GeoIP
    teams: TeamManager
    tracker: CallTracker
    hung: HungMarks
    enqueuer: EventEnqueuer  # where posthog.capture and plugin metrics events go
    api_keys: PersonalApiKeys  # posthog.api's bot keys, per organization
    stored_events: StoredEvents | None = None  # where historical exports read (None: Postgres, via pool)


@dataclass(frozen=True)
class WorkerPlugins:
    """A worker's plugin machinery: the configs in force (empty until `registry.reload()`), the job
    queue's handler for plugin jobs, the metrics reporter, the capability discovery and what the
    scheduler reads the scheduled tasks from."""

    registry: PluginRegistry
    job_runner: PluginJobRunner
    metrics: PluginMetricsReporter
    capabilities: CapabilityDiscovery
    scheduled_tasks: ScheduleSource
