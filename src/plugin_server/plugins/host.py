"""What the plugins of one worker share, and how a plugin config becomes a running instance.

The host owns the shared services (database pool, Redis, HTTP client, log writer, job queue, GeoIP)
and builds, per plugin config, the `meta` object and the instance of the right runtime. It also runs
plugin jobs and scheduled tasks taken from the job queue, and reports plugin metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from types import SimpleNamespace
from typing import Any

import httpx
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool
from structlog.contextvars import bound_contextvars

from plugin_server.config import Settings
from plugin_server.ingestion.enqueue import EventEnqueuer, open_enqueuer
from plugin_server.ingestion.teams import TeamManager
from plugin_server.jobs.queue import JobQueue, PluginJob
from plugin_server.plugins.egress import plugin_connect_guard, plugin_http_client
from plugin_server.plugins.export import EXPORT_RETRY_JOB, ExportBuffer
from plugin_server.plugins.historical import JOBS as HISTORICAL_JOBS
from plugin_server.plugins.historical import START_JOB, HistoricalExport, register_public_job
from plugin_server.plugins.instance import PluginError, PluginInstance, PluginTimeout
from plugin_server.plugins.js.modules import load_modules
from plugin_server.plugins.js.runtime import JSPlugin, MemoryLimits
from plugin_server.plugins.js.timers import TimerLimits
from plugin_server.plugins.js.transpile import get_transpiler
from plugin_server.plugins.loader import IN_FORCE_CTE, resolve_plugin_code
from plugin_server.plugins.meta.cache import PluginCache
from plugin_server.plugins.meta.jobs import PluginJobs
from plugin_server.plugins.meta.logs import BufferedLogWriter, PluginLogger
from plugin_server.plugins.meta.metrics import PluginMetrics, declared_metrics
from plugin_server.plugins.meta.network import ConnectGuard, resolve_addresses
from plugin_server.plugins.meta.posthog import PersonalApiKeys, PostHogApi, PostHogCapture, origin
from plugin_server.plugins.meta.storage import Cursor, PluginStorage
from plugin_server.plugins.models import PluginConfigInForce
from plugin_server.plugins.registry import PluginRegistry
from plugin_server.plugins.runtime_py import PythonPlugin
from plugin_server.plugins.tracking import CallTracker, HungMarks, job_label
from plugin_server.plugins.vm import PluginVM
from plugin_server.services.geoip import GeoIP
from plugin_server.services.metrics import get_metrics
from plugin_server.topology import open_log_writer

log = logging.getLogger(__name__)

PLUGIN_METRICS_EVENT = "$$plugin_metrics"


class GeoIPExtension:
    """`meta.geoip`: `await meta.geoip.locate(ip)` gives the MaxMind City record or None."""

    def __init__(self, geoip: GeoIP) -> None:
        self._geoip = geoip

    async def locate(self, ip: str) -> dict[str, Any] | None:
        return self._geoip.locate(ip)


class Meta(SimpleNamespace):
    """The `meta` a plugin function gets: config, attachments, global_ (also as `global`), cache,
    storage, jobs, geoip, metrics, utils.cursor, posthog.capture/api and logger."""


@dataclass
class PluginHost:
    settings: Settings
    pool: AsyncConnectionPool[Any]
    redis: aioredis.Redis
    http: httpx.AsyncClient
    posthog_http: httpx.AsyncClient
    logs: BufferedLogWriter
    jobs: JobQueue
    geoip: GeoIP
    teams: TeamManager
    tracker: CallTracker
    hung: HungMarks
    enqueuer: EventEnqueuer  # where posthog.capture and plugin metrics events go
    # Where JS plugins' own connections (pg, snowflake-sdk, aws-sdk endpoints) may go: the hook for a
    # network policy such as refusing private addresses. Their HTTP goes through `http`.
    connect_guard: ConnectGuard = resolve_addresses
    registry: PluginRegistry = field(init=False)
    _api_keys: PersonalApiKeys = field(init=False)
    _background: set[asyncio.Task[Any]] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.registry = PluginRegistry(
            self.pool, self.create_vm, idle_unload_seconds=self.settings.PLUGIN_IDLE_UNLOAD_SECONDS
        )
        self._api_keys = PersonalApiKeys(self.pool)

    def create_vm(self, config: PluginConfigInForce) -> PluginVM:
        instance_id = str(uuid.uuid4())
        logger = PluginLogger(
            self.logs,
            team_id=config.config.team_id or 0,
            plugin_id=config.plugin.id,
            plugin_config_id=config.id,
            instance_id=instance_id,
        )
        return PluginVM(
            config,
            instance_id=instance_id,
            pool=self.pool,
            logger=logger,
            create=self._create_instance,
            hung=self.hung,
        )

    async def _create_instance(self, vm: PluginVM) -> PluginInstance:
        config = vm.config
        code = resolve_plugin_code(config.plugin, self.settings.BASE_DIR)
        meta = await self._meta(vm)
        instance: PythonPlugin | JSPlugin
        if code.language == "python":
            instance = PythonPlugin.load(
                code,
                meta,
                plugin_config_id=config.id,
                timeout=self.settings.TASK_TIMEOUT,
                tracker=self.tracker,
            )
        else:
            transpiler = get_transpiler()
            instance = await JSPlugin.load(
                await load_modules(code.files, code.main, transpiler),
                meta,
                plugin_config_id=config.id,
                timeout=self.settings.TASK_TIMEOUT,
                memory=MemoryLimits(
                    heap_mb=self.settings.JS_HEAP_LIMIT_MB,
                    array_buffers_mb=self.settings.JS_ARRAY_BUFFER_LIMIT_MB,
                ),
                http=self.http,
                guards_name=transpiler.guards_name,
                timers=TimerLimits(
                    max_timers=self.settings.JS_MAX_TIMERS,
                    min_interval=self.settings.JS_TIMER_MIN_INTERVAL_MS / 1000,
                    cpu_share=self.settings.JS_TIMER_CPU_SHARE,
                ),
                record_error=partial(vm.record_error, function="timers", outcome="its calls go on"),
                guard=self.connect_guard,
            )
        if vm.metrics is None:  # kept when the instance is set up again (after unloading when idle)
            vm.metrics = PluginMetrics(declared_metrics(instance.metrics, instance.methods))
        meta.metrics = vm.metrics
        if "exportEvents" in instance.methods:
            retry = meta.jobs[EXPORT_RETRY_JOB]  # a durable job of this config, like any plugin job
            vm.export_buffer = ExportBuffer(
                instance,
                config=config.config.config,
                metrics=vm.metrics,
                plugin=vm.labels,
                schedule_retry=lambda payload, delay: retry(payload).run_in(delay, "seconds"),
                record_error=partial(vm.record_error, function="timers", outcome="its calls go on"),
            )
            if START_JOB not in (config.plugin.public_jobs or {}):
                await register_public_job(self.pool, config.plugin.id)
            vm.historical_export = HistoricalExport(
                self.pool,
                instance,
                team_id=config.config.team_id or 0,
                storage=meta.storage,
                jobs=meta.jobs,
                logger=vm.logger,
            )
        return instance

    async def _meta(self, vm: PluginVM) -> Meta:
        config = vm.config
        team_id = config.config.team_id or 0
        team = await self.teams.get_team(team_id)
        if team is None:
            raise PluginError(f"team {team_id} of plugin config {config.id} does not exist")
        shared_global: dict[str, Any] = {}
        meta = Meta(
            config=dict(config.config.config),
            attachments=config.attachments,
            global_=shared_global,
            cache=PluginCache(self.redis, plugin_id=config.plugin.id, team_id=team_id),
            storage=PluginStorage(self.pool, config.id),
            jobs=PluginJobs(self.jobs, config.id, team_id),
            geoip=GeoIPExtension(self.geoip),
            metrics=None,
            utils=SimpleNamespace(cursor=Cursor(self.pool, config.id)),
            posthog=SimpleNamespace(
                capture=self._capture(config).capture,
                api=PostHogApi(
                    http=self.posthog_http,
                    keys=self._api_keys,
                    team_api_token=team.api_token,
                    organization_id=team.organization_id,
                    default_host=self.settings.POSTHOG_API_HOST,
                ),
            ),
            logger=vm.logger,
        )
        setattr(meta, "global", shared_global)  # `global` is a Python keyword: reachable as meta.global_
        return meta

    def _capture(self, config: PluginConfigInForce) -> PostHogCapture:
        """`posthog.capture` for this config: events go into the ingestion queue as the team's."""
        return PostHogCapture(
            team_id=config.config.team_id or 0,
            plugin_name=config.plugin.name,
            plugin_id=config.plugin.id,
            enqueuer=self.enqueuer,
        )

    async def run_job(self, job: PluginJob) -> None:
        """Run a job or scheduled task from the job queue; an error fails the job (and is recorded)."""
        vm = self.registry.get(job.plugin_config_id)
        if vm is None:
            raise PluginError(f"plugin config {job.plugin_config_id} is not enabled")
        async with vm.use() as instance:  # not unloaded as idle while the job runs
            if instance is None:
                raise PluginError(f"plugin {vm.name} is not set up")
            method = job.type if job.kind == "schedule" else f"jobs.{job.type}"
            with bound_contextvars(**vm.labels.log_context()), get_metrics().plugin_call(vm.labels, method):
                await self._run_job_with(vm, instance, job)

    async def _run_job_with(self, vm: PluginVM, instance: PluginInstance, job: PluginJob) -> None:
        label = job.type if job.kind == "schedule" else job_label(job.type)
        try:
            if await self.hung.take(job.plugin_config_id, label):
                raise PluginTimeout(
                    f"{label} ran for longer than TASK_TIMEOUT before and its worker was replaced"
                )
            if job.kind == "schedule":
                await instance.run_task(job.type)
            elif job.type in HISTORICAL_JOBS and vm.historical_export is not None:
                await vm.historical_export.run(job.type, job.payload)
            elif job.type == EXPORT_RETRY_JOB and vm.export_buffer is not None:
                payload = job.payload
                await vm.export_buffer.export(
                    payload["batch"], payload["batchId"], payload["retriesPerformedSoFar"]
                )
            else:
                await instance.run_job(job.type, job.payload)
        except Exception as error:
            await vm.record_error(error, function=label, outcome="not retried")
            raise

    def discover_capabilities(self) -> None:
        """Set up, in the background, the plugins whose capabilities were never recorded, so that
        their scheduled tasks are known before any event arrives (the rest stay lazy)."""
        for vm in self.registry.all():
            if "scheduled_tasks" not in vm.config.plugin.capabilities:
                task = asyncio.create_task(vm.get())
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def scheduled_tasks(self) -> dict[int, list[str]]:
        """Scheduled tasks of the configs in force, from the capabilities their plugins reported."""
        async with self.pool.connection() as connection:
            cursor = await connection.execute(
                f"""{IN_FORCE_CTE}
                    SELECT p.id AS config_id, plugin.capabilities->'scheduled_tasks' AS tasks
                    FROM in_force p JOIN posthog_plugin plugin ON plugin.id = p.plugin_id
                    WHERE jsonb_typeof(plugin.capabilities->'scheduled_tasks') = 'array'"""
            )
            rows = await cursor.fetchall()
        return {row["config_id"]: [str(task) for task in row["tasks"]] for row in rows if row["tasks"]}

    async def report_metrics(self) -> None:
        """Capture each plugin config's metrics since the last report as a $$plugin_metrics event."""
        for vm in list(self.registry.all()):
            if vm.metrics is None:
                continue
            values = vm.metrics.snapshot_and_reset()
            if not values:
                continue
            plugin = vm.config.plugin
            properties = {
                **values,
                "plugin_name": plugin.name,
                "plugin_id": plugin.id,
                "plugin_tag": plugin.tag,
            }
            await self._capture(vm.config).capture(PLUGIN_METRICS_EVENT, properties)


@contextlib.asynccontextmanager
async def open_plugin_host(
    settings: Settings,
    pool: AsyncConnectionPool[Any],
    redis: aioredis.Redis,
    *,
    geoip: GeoIP,
    tracker: CallTracker,
) -> AsyncIterator[PluginHost]:
    """A plugin host with its own HTTP clients, log writer and job queue; on exit the plugins are torn
    down and their logs flushed. Its registry is empty until `registry.reload()`.

    Plugin HTTP goes only where the egress policy allows (PLUGIN_HTTP_*); posthog.api's client also
    reaches the configured PostHog host wherever it is (the operator chose it)."""
    posthog_url = httpx.URL(settings.POSTHOG_API_HOST)
    posthog_origin = (posthog_url.raw_host.decode("ascii"), origin(posthog_url)[2])  # as connections name it
    async with (
        plugin_http_client(settings) as http,
        plugin_http_client(settings, trusted=[posthog_origin]) as posthog_http,
    ):
        logs = open_log_writer(settings, pool)
        enqueuer = open_enqueuer(settings, redis)  # posthog.capture and plugin metrics events
        host = PluginHost(
            settings=settings,
            pool=pool,
            redis=redis,
            http=http,
            posthog_http=posthog_http,
            connect_guard=plugin_connect_guard(settings),
            enqueuer=enqueuer,
            logs=logs,
            jobs=JobQueue(pool, lease_seconds=settings.JOB_LEASE_SECONDS),
            geoip=geoip,
            teams=TeamManager(pool),
            tracker=tracker,
            hung=HungMarks(redis),
        )
        try:
            yield host
        finally:
            await host.registry.close()
            await logs.close()
            await enqueuer.close()
