"""Metrics over time for the console's charts, from the server's own Prometheus metrics.

The web process reads the metrics of every process (`services.metrics.render`) when a chart asks,
at most once a second, and keeps the last samples in memory; rates are differences between two
samples. So the charts show the time since someone first looked (up to `HISTORY_SAMPLES` samples),
and with WEB_CONCURRENCY > 1 each web process keeps its own history.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from plugin_server.services.metrics import render

HISTORY_SAMPLES = 900
MIN_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class PluginTotals:
    """One plugin config's counters, summed over its methods."""

    name: str = ""
    calls: float = 0.0
    errors: float = 0.0
    seconds: float = 0.0  # time spent in calls
    timed: float = 0.0  # how many calls were timed

    @property
    def mean_ms(self) -> float:
        return 1000 * self.seconds / self.timed if self.timed else 0.0


@dataclass(slots=True)
class Sample:
    at: float
    received: float = 0.0
    ingested: float = 0.0
    dead_letters: float = 0.0
    queue_depth: float = 0.0
    queue_lag: float = 0.0
    plugins: dict[int, PluginTotals] = field(default_factory=dict)


def read_sample(text: str, at: float) -> Sample:
    """The totals of a Prometheus text exposition."""
    sample = Sample(at)
    plugins: dict[int, dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        for name, labels, value, *_ in family.samples:
            if name == "plugin_server_events_received_total":
                sample.received += value
            elif name == "plugin_server_events_ingested_total":
                sample.ingested = value
            elif name == "plugin_server_dead_letters_total":
                sample.dead_letters = value
            elif name == "plugin_server_queue_depth":
                sample.queue_depth = max(sample.queue_depth, value)
            elif name == "plugin_server_queue_lag_seconds":
                sample.queue_lag = max(sample.queue_lag, value)
            elif name in _PLUGIN_SAMPLES and labels.get("plugin_config_id", "").isdigit():
                totals = plugins.setdefault(
                    int(labels["plugin_config_id"]), {"name": labels.get("plugin", "")}
                )
                key = _PLUGIN_SAMPLES[name]
                totals[key] = totals.get(key, 0.0) + value
    sample.plugins = {config: PluginTotals(**totals) for config, totals in plugins.items()}
    return sample


_PLUGIN_SAMPLES = {
    "plugin_server_plugin_calls_total": "calls",
    "plugin_server_plugin_errors_total": "errors",
    "plugin_server_plugin_call_duration_seconds_sum": "seconds",
    "plugin_server_plugin_call_duration_seconds_count": "timed",
}


class MetricsHistory:
    def __init__(self, read: Callable[[], bytes] = render, clock: Callable[[], float] = time.time) -> None:
        self._read = read
        self._clock = clock
        self._samples: deque[Sample] = deque(maxlen=HISTORY_SAMPLES)

    def latest(self) -> Sample:
        """A sample of now (or of less than MIN_INTERVAL_SECONDS ago), kept in the history."""
        now = self._clock()
        if not self._samples or now - self._samples[-1].at >= MIN_INTERVAL_SECONDS:
            self._samples.append(read_sample(self._read().decode(), now))
        return self._samples[-1]

    def series(self, plugin_config_id: int | None = None) -> dict[str, list[float]]:
        """Columns for the charts (uPlot's format: `t` in unix seconds, then one list per line), one
        point per pair of consecutive samples."""
        self.latest()
        columns: dict[str, list[float]] = {
            name: []
            for name in (
                "t",
                "received_per_s",
                "ingested_per_s",
                "queue_depth",
                "queue_lag",
                "calls_per_s",
                "errors_per_s",
                "mean_ms",
            )
        }
        for before, after in pairwise(self._samples):
            elapsed = after.at - before.at
            columns["t"].append(round(after.at, 3))
            columns["received_per_s"].append(_rate(after.received - before.received, elapsed))
            columns["ingested_per_s"].append(_rate(after.ingested - before.ingested, elapsed))
            columns["queue_depth"].append(after.queue_depth)
            columns["queue_lag"].append(round(after.queue_lag, 3))
            if plugin_config_id is not None:
                old = before.plugins.get(plugin_config_id, PluginTotals())
                new = after.plugins.get(plugin_config_id, PluginTotals())
                timed = new.timed - old.timed
                columns["calls_per_s"].append(_rate(new.calls - old.calls, elapsed))
                columns["errors_per_s"].append(_rate(new.errors - old.errors, elapsed))
                columns["mean_ms"].append(
                    round(1000 * (new.seconds - old.seconds) / timed, 3) if timed > 0 else 0.0
                )
        return columns


def _rate(delta: float, elapsed: float) -> float:
    # a counter that went down belongs to a process that restarted: no rate for that step
    return round(delta / elapsed, 3) if delta > 0 and elapsed > 0 else 0.0
