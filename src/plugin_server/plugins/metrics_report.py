"""Plugin metrics (`meta.metrics`) reported as `$$plugin_metrics` events, as the original did."""

from __future__ import annotations

from plugin_server.ingestion.enqueue import EventEnqueuer
from plugin_server.plugins.meta.posthog import plugin_capture
from plugin_server.plugins.registry import PluginRegistry

PLUGIN_METRICS_EVENT = "$$plugin_metrics"


class PluginMetricsReporter:
    def __init__(self, registry: PluginRegistry, enqueuer: EventEnqueuer) -> None:
        self._registry = registry
        self._enqueuer = enqueuer

    async def report(self) -> None:
        """Capture each plugin config's metrics since the last report as a $$plugin_metrics event."""
        for vm in list(self._registry.all()):
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
            await plugin_capture(vm.config, self._enqueuer).capture(PLUGIN_METRICS_EVENT, properties)
