"""How a plugin config becomes a PluginVM, and its VM's instance: the code resolved, `meta` built,
the runtime chosen from the table, and the export machinery of plugins with exportEvents attached."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

from plugin_server.jobs.queue import JobQueue
from plugin_server.plugins.export import EXPORT_RETRY_JOB, ExportBuffer, QueuedExports
from plugin_server.plugins.historical import START_JOB, HistoricalExport, StoredEvents, register_public_job
from plugin_server.plugins.instance import LoadRequest, PluginInstance, RuntimeServices
from plugin_server.plugins.loader import resolve_plugin_code
from plugin_server.plugins.meta.api import Meta
from plugin_server.plugins.meta.build import MetaFactory
from plugin_server.plugins.meta.logs import BufferedLogWriter, PluginLogger
from plugin_server.plugins.meta.metrics import PluginMetrics, declared_metrics
from plugin_server.plugins.models import PluginConfigInForce
from plugin_server.plugins.runtimes import RUNTIMES
from plugin_server.plugins.tracking import HungMarks
from plugin_server.plugins.vm import PluginVM


@dataclass(frozen=True)
class InstanceFactory:
    """A VM's instance (PluginVM's `create`), loaded by the runtime of its code's language."""

    base_dir: Path  # where `file:` plugin urls are resolved
    meta: MetaFactory
    runtimes: RuntimeServices
    pool: AsyncConnectionPool[Any]  # to register the historical export's public job
    stored_events: StoredEvents | None = None  # where the historical export reads (None: Postgres)
    jobs: JobQueue | None = None  # where buffered exports are held durably (None: in memory only)

    async def __call__(self, vm: PluginVM) -> PluginInstance:
        config = vm.config
        code = resolve_plugin_code(config.plugin, self.base_dir)
        meta = await self.meta(config, vm.logger)
        timer_errors = partial(vm.record_error, function="timers", outcome="its calls go on")
        request = LoadRequest(code, meta, plugin_config_id=config.id, record_error=timer_errors)
        instance = await RUNTIMES[code.language].load(request, self.runtimes)
        if vm.metrics is None:  # kept when the instance is set up again (after unloading when idle)
            vm.metrics = PluginMetrics(declared_metrics(instance.metrics, instance.methods))
        meta.metrics = vm.metrics
        if "exportEvents" in instance.methods:
            await self._attach_export(vm, instance, meta)
        return instance

    async def prepare(self, config: PluginConfigInForce) -> None:
        """What the config's runtime can do ahead of its first load (JS: transpile its code)."""
        code = resolve_plugin_code(config.plugin, self.base_dir)
        await RUNTIMES[code.language].prepare(code)

    async def _attach_export(self, vm: PluginVM, instance: PluginInstance, meta: Meta) -> None:
        """The export buffer (exportEvents in batches, retried as durable jobs) and the historical export."""
        config = vm.config
        assert vm.metrics is not None
        retry = meta.jobs[EXPORT_RETRY_JOB]  # a durable job of this config, like any plugin job
        vm.export_buffer = ExportBuffer(
            instance,
            config=config.config.config,
            metrics=vm.metrics,
            plugin=vm.labels,
            schedule_retry=lambda payload, delay: retry(payload).run_in(delay, "seconds"),
            record_error=vm.record_error,
            held=None
            if self.jobs is None
            else QueuedExports(self.jobs, config.id, config.config.team_id or 0),
            call_seconds=self.runtimes.settings.TASK_TIMEOUT,
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
            events=self.stored_events,
        )


@dataclass(frozen=True)
class VMFactory:
    """config -> its PluginVM (the registry's `create_vm`), with a logger of its own instance id."""

    pool: AsyncConnectionPool[Any]
    logs: BufferedLogWriter
    hung: HungMarks
    create: InstanceFactory

    def __call__(self, config: PluginConfigInForce) -> PluginVM:
        instance_id = str(uuid.uuid4())
        logger = PluginLogger(
            self.logs,
            team_id=config.config.team_id or 0,
            plugin_id=config.plugin.id,
            plugin_config_id=config.id,
            instance_id=instance_id,
        )
        return PluginVM(
            config, instance_id=instance_id, pool=self.pool, logger=logger, create=self.create, hung=self.hung
        )
