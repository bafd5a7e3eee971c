"""Plugin jobs and scheduled tasks taken from the job queue, run on the worker's plugin instances."""

from __future__ import annotations

from redis.exceptions import RedisError
from structlog.contextvars import bound_contextvars

from plugin_server.jobs.queue import PluginJob, TryAgainLater
from plugin_server.plugins.export import EXPORT_RETRY_JOB
from plugin_server.plugins.historical import JOBS as HISTORICAL_JOBS
from plugin_server.plugins.instance import PluginError, PluginInstance, PluginTimeout
from plugin_server.plugins.registry import PluginRegistry
from plugin_server.plugins.tracking import HungMarks, job_label
from plugin_server.plugins.vm import PluginVM
from plugin_server.services.metrics import get_metrics


class PluginJobRunner:
    """`run(job)` is the job queue's handler for plugin jobs and scheduled tasks."""

    def __init__(self, registry: PluginRegistry, hung: HungMarks) -> None:
        self._registry = registry
        self._hung = hung

    async def run(self, job: PluginJob) -> None:
        """Run a job or scheduled task from the job queue; an error fails the job (and is recorded)."""
        vm = self._registry.get(job.plugin_config_id)
        if vm is None:
            raise PluginError(f"plugin config {job.plugin_config_id} is not enabled")
        async with vm.use() as instance:  # not unloaded as idle while the job runs
            if instance is None:
                raise PluginError(f"plugin {vm.name} is not set up")
            method = job.type if job.kind == "schedule" else f"jobs.{job.type}"
            with bound_contextvars(**vm.labels.log_context()), get_metrics().plugin_call(vm.labels, method):
                await self._run_with(vm, instance, job)

    async def _run_with(self, vm: PluginVM, instance: PluginInstance, job: PluginJob) -> None:
        label = job.type if job.kind == "schedule" else job_label(job.type)
        try:
            if await self._was_hung(job.plugin_config_id, label):
                raise PluginTimeout(
                    f"{label} ran for longer than TASK_TIMEOUT before and its worker was replaced"
                )
            if job.kind == "schedule":
                await instance.run_task(job.type)
            elif job.type in HISTORICAL_JOBS and vm.historical_export is not None:
                await vm.historical_export.run(job.type, job.payload)
            elif job.type == EXPORT_RETRY_JOB and vm.export_buffer is not None:
                payload = job.payload
                try:
                    await vm.export_buffer.export(
                        payload["batch"], payload["batchId"], payload["retriesPerformedSoFar"]
                    )
                except Exception as error:  # export() handles the plugin's errors: this one is the server's
                    raise TryAgainLater(f"exporting a held batch failed: {error!r}") from error
            else:
                await instance.run_job(job.type, job.payload)
        except TryAgainLater:
            raise
        except Exception as error:
            await vm.record_error(error, function=label, outcome="not retried")
            raise

    async def _was_hung(self, plugin_config_id: int, label: str) -> bool:
        """Whether the last run of this call was marked hung (the mark is taken); Redis unreachable
        is the server's passing failure, not the job's."""
        try:
            return await self._hung.take(plugin_config_id, label)
        except (RedisError, OSError) as error:
            raise TryAgainLater(f"the hung-call marks could not be read: {error!r}") from error
