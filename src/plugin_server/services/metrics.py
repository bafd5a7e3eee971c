"""Every metric of the server, defined once, recorded to Prometheus and (with STATSD_HOST) to StatsD.

Prometheus: the supervisor, the web process and the workers are separate processes, so their values
live in prometheus_client's multiprocess files under PROMETHEUS_MULTIPROC_DIR. The supervisor creates
that directory, a folder of its own under PLUGIN_SERVER_DATA_DIR/prometheus (`use_multiprocess_dir`),
before it starts any child; children inherit it through their environment, and `/metrics` merges the
files of all of them (`render`). Without the directory (one process, e.g. tests) values stay in the
recording process's own registry.

Recording never fails its caller: a metric is not a reason to drop or dead-letter an event. What goes
wrong (the directory deleted under a running server, a full disk) is logged, at most once a minute per
method, and counted in plugin_server_telemetry_errors_total; when the directory is gone it is made
again and this process's metrics start new files there (what was counted before is lost to /metrics).

StatsD: the original's names (reference section 7.2) under STATSD_PREFIX, with tags in the Telegraf
form (`name,tag=value`) its hot-shots client sent.

Callers count per batch, not per event: recording is a dictionary lookup and a memory-mapped write.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Concatenate, ParamSpec

import statsd
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from plugin_server.config import Settings
from plugin_server.services.instance_dir import instance_dir

log = logging.getLogger(__name__)
P = ParamSpec("P")

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Plugin methods as the `method` label names them (JS names, as in posthog_plugin.capabilities).
PROCESS_EVENT = "processEvent"
ON_EVENT = "onEvent"
EXPORT_EVENTS = "exportEvents"

_STATSD_UNSAFE = re.compile(r"[\s:|@,=]")
TELEMETRY_ERROR_LOG_SECONDS = 60.0
_next_failure_log: dict[str, float] = {}  # method -> when its next failure may be logged


@dataclass(frozen=True, slots=True)
class PluginLabels:
    """Who a plugin call belongs to, as metrics name it."""

    plugin_config_id: int
    plugin_name: str
    team_id: int
    statsd_name: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        # Characters that would break a StatsD line; the original sent names as they were.
        object.__setattr__(self, "statsd_name", _STATSD_UNSAFE.sub("_", self.plugin_name))

    def log_context(self) -> dict[str, int]:
        """What log lines about this plugin config carry (see plugin_server.logs)."""
        return {"team_id": self.team_id, "plugin_config_id": self.plugin_config_id}


@dataclass(slots=True)
class PluginCall:
    """What the caller reports about a call while it is timed: how many events failed in it."""

    errors: int = 0


def _directory_lost() -> bool:
    """Whether the multiprocess directory is gone. Values of a metric type whose file this process has
    open would go on into that file, unlinked, without an error: without this look (one stat per
    recording), a deleted directory would lose them silently."""
    directory = os.environ.get(MULTIPROC_DIR_ENV)
    return bool(directory) and not os.path.isdir(directory)  # type: ignore[arg-type]


def _never_raises(
    record: Callable[Concatenate[Metrics, P], None],
) -> Callable[Concatenate[Metrics, P], None]:
    """A recording method that logs and counts its failure (`recording_failed`) instead of raising."""

    def guarded(self: Metrics, /, *args: P.args, **kwargs: P.kwargs) -> None:
        name = record.__name__.strip("_")
        try:
            if _directory_lost():  # made again, counted, and this value recorded in the new one
                self.recording_failed(name, FileNotFoundError(os.environ.get(MULTIPROC_DIR_ENV)))
                self = get_metrics()
            record(self, *args, **kwargs)
        except Exception as error:
            self.recording_failed(name, error)

    functools.update_wrapper(guarded, record)
    return guarded


class Metrics:
    """The server's metrics. Use `get_metrics()`; `configure_metrics` sets the StatsD client up."""

    def __init__(self, statsd_client: statsd.StatsClient | None = None) -> None:
        self._statsd = statsd_client
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self._received = Counter(
            "plugin_server_events_received", "Messages taken from an ingestion source", ["source"], registry=r
        )
        self._ingested = Counter("plugin_server_events_ingested", "Events stored", registry=r)
        self._dropped = Counter(
            "plugin_server_events_dropped", "Events dropped by a plugin's processEvent", registry=r
        )
        self._dead_letters = Counter(
            "plugin_server_dead_letters", "Messages sent to the dead letter store", registry=r
        )
        self._set_aside = Counter(
            "plugin_server_events_set_aside",
            "Events split off from their micro-batch because their team's plugins were slow",
            registry=r,
        )
        plugin_labels = ["plugin_config_id", "plugin", "method"]
        self._plugin_calls = Counter(
            "plugin_server_plugin_calls",
            "Events (processEvent, onEvent) or runs (exportEvents, tasks, jobs) handed to a plugin method",
            plugin_labels,
            registry=r,
        )
        self._plugin_seconds = Histogram(
            "plugin_server_plugin_call_duration_seconds",
            "Time of one plugin method call over a micro-batch, or of one run",
            plugin_labels,
            registry=r,
        )
        self._plugin_errors = Counter(
            "plugin_server_plugin_errors",
            "Events or runs on which a plugin method failed",
            plugin_labels,
            registry=r,
        )
        self._export_retries = Counter(
            "plugin_server_export_retries",
            "exportEvents batches scheduled again (enqueued) or given up (dropped)",
            ["outcome"],
            registry=r,
        )
        self._log_entries = Counter(
            "plugin_server_plugin_log_entries", "Plugin log entries stored", registry=r
        )
        self._queue_depth = Gauge(
            "plugin_server_queue_depth",
            "Messages waiting in the Celery ingestion list",
            ["queue"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self._queue_lag = Gauge(
            "plugin_server_queue_lag_seconds",
            "Age of the oldest waiting event (from its `now`); 0 when none waits",
            ["queue"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self._kafka_lag = Gauge(
            "plugin_server_kafka_consumer_lag",
            "Messages of an assigned partition of KAFKA_CONSUMPTION_TOPIC not yet consumed by its worker",
            ["topic", "partition"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self._job_queue_depth = Gauge(
            "plugin_server_job_queue_depth",
            "Plugin jobs, scheduled tasks and hook deliveries due and waiting in plugin_server_jobs",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self._worker_restarts = Counter(
            "plugin_server_worker_restarts",
            "Worker processes started again (exited, stalled, or stuck in plugin code)",
            ["reason"],
            registry=r,
        )
        self._memory_given_back = Counter(
            "plugin_server_memory_given_back_bytes",
            "Resident memory the workers' allocator handed back to the system (malloc_trim)",
            registry=r,
        )
        self._telemetry_errors = Counter(
            "plugin_server_telemetry_errors",
            "Metrics that could not be recorded (the events they were about went on)",
            ["method"],
            registry=r,
        )
        self._plugin_children: dict[tuple[PluginLabels, str], tuple[Counter, Histogram, Counter]] = {}
        self._action_matching_seconds = Histogram(
            "plugin_server_action_matching_seconds",
            "Time to match a micro-batch's events against their teams' actions",
            registry=r,
        )
        self._action_matches = Counter(
            "plugin_server_action_matches", "Action matches found (event, action pairs)", registry=r
        )
        self._action_step_errors = Counter(
            "plugin_server_action_step_errors",
            "Action steps that raised while matching an event (counted as no match)",
            registry=r,
        )
        self._action_batch_errors = Counter(
            "plugin_server_action_batch_errors",
            "Stored batches whose action matching or hooks failed on an unexpected error (skipped, logged)",
            registry=r,
        )
        self._hook_deliveries = Counter(
            "plugin_server_hook_deliveries",
            "Webhook (Slack, Discord, Teams) and REST hook deliveries by outcome: delivered, retried, "
            "failed (no attempts left or refused), gone (410: REST hook deleted), queued_celery (seed task sent)",
            ["kind", "outcome"],
            registry=r,
        )

    def recording_failed(self, method: str, error: Exception) -> None:
        """Log (once a minute per method) and count a metric that could not be recorded; when the
        multiprocess directory was deleted, make it again and start this process's metrics afresh."""
        now = time.monotonic()
        if now >= _next_failure_log.get(method, 0.0):
            _next_failure_log[method] = now + TELEMETRY_ERROR_LOG_SECONDS
            log.error("recording the metric %s failed (events go on; said once a minute): %r", method, error)
        directory = os.environ.get(MULTIPROC_DIR_ENV)
        try:
            counting = self
            if isinstance(error, OSError) and directory and not os.path.isdir(directory):
                Path(directory).mkdir(parents=True, exist_ok=True)
                counting = _start_metrics(self._statsd)
            counting._telemetry_errors.labels(method).inc()
        except Exception:  # nothing more to do: it is logged
            return

    # --- ingestion

    @_never_raises
    def events_received(self, source: str, count: int) -> None:
        self._received.labels(source).inc(count)

    @_never_raises
    def batch_ingested(self, stored: int, dropped: int) -> None:
        if stored:
            self._ingested.inc(stored)
        if dropped:
            self._dropped.inc(dropped)

    @_never_raises
    def dead_lettered(self, count: int) -> None:
        if count:
            self._dead_letters.inc(count)
            self._incr("events_added_to_dead_letter_queue", count)

    @_never_raises
    def events_set_aside(self, count: int) -> None:
        self._set_aside.inc(count)

    @_never_raises
    def queue_sampled(self, queue: str, depth: int, lag_seconds: float) -> None:
        self._queue_depth.labels(queue).set(depth)
        self._queue_lag.labels(queue).set(lag_seconds)

    @_never_raises
    def kafka_lag_sampled(self, topic: str, partition: int, lag: int) -> None:
        self._kafka_lag.labels(topic, str(partition)).set(lag)

    @_never_raises
    def job_queue_sampled(self, depth: int) -> None:
        self._job_queue_depth.set(depth)

    @_never_raises
    def worker_restarted(self, reason: str) -> None:
        self._worker_restarts.labels(reason).inc()
        if reason == "stalled":
            self._incr("alerts.stale_plugin_server_restarted")

    @_never_raises
    def memory_given_back(self, size: int) -> None:
        self._memory_given_back.inc(size)

    # --- plugins

    @contextmanager
    def plugin_call(self, plugin: PluginLabels, method: str, calls: int = 1) -> Iterator[PluginCall]:
        """Time the block as one call of `method` handing `calls` events (or runs) to the plugin.

        The block sets `errors` on what it gets for events that failed inside; a block that raises
        counts as `calls` errors."""
        call = PluginCall()
        started = time.perf_counter()
        try:
            yield call
        except BaseException:
            call.errors = calls
            raise
        finally:
            self._plugin_call_done(plugin, method, calls, call.errors, time.perf_counter() - started)

    @_never_raises
    def _plugin_call_done(
        self, plugin: PluginLabels, method: str, calls: int, errors: int, seconds: float
    ) -> None:
        children = self._plugin_children.get((plugin, method))
        if children is None:
            labels = (str(plugin.plugin_config_id), plugin.plugin_name, method)
            children = (
                self._plugin_calls.labels(*labels),
                self._plugin_seconds.labels(*labels),
                self._plugin_errors.labels(*labels),
            )
            self._plugin_children[(plugin, method)] = children
        counted, timed, failed = children
        counted.inc(calls)
        timed.observe(seconds)
        if errors:
            failed.inc(errors)
        if self._statsd is not None:
            self._plugin_call_to_statsd(plugin, method, errors, seconds)

    def _plugin_call_to_statsd(self, plugin: PluginLabels, method: str, errors: int, seconds: float) -> None:
        assert self._statsd is not None
        name, millis = plugin.statsd_name, seconds * 1000
        if method == PROCESS_EVENT:
            self._statsd.timing(f"plugin.process_event,plugin={name},teamId={plugin.team_id}", millis)
            if errors:
                self._statsd.incr(f"plugin.{name}.process_event.ERROR", errors)
        elif method == ON_EVENT:
            self._statsd.timing(f"plugin.{name}.on_event", millis)
            if errors:
                self._statsd.incr(f"plugin.{name}.on_event.ERROR", errors)
        elif method == EXPORT_EVENTS:
            if not errors:
                self._statsd.timing("plugin.export_events.success", millis)
        elif errors:  # a scheduled task (`runEveryMinute`) or a job (`jobs.<name>`)
            kind, task = ("job", method[5:]) if method.startswith("jobs.") else ("schedule", method)
            self._statsd.incr(f"plugin.task.{kind}.{task}.{plugin.plugin_config_id}.ERROR", errors)

    @_never_raises
    def export_retry(self, enqueued: bool) -> None:
        outcome = "enqueued" if enqueued else "dropped"
        self._export_retries.labels(outcome).inc()
        self._incr(f"plugin.export_events.retry_{outcome}")

    @_never_raises
    def log_entries_created(self, count: int) -> None:
        self._log_entries.inc(count)
        self._incr("logs.entries_created", count)

    # --- actions and hooks

    @_never_raises
    def actions_matched(self, events: int, matches: int, seconds: float) -> None:
        """A batch matched; StatsD gets the original's per-event timing as the batch's average."""
        self._action_matching_seconds.observe(seconds)
        if matches:
            self._action_matches.inc(matches)
        if self._statsd is not None and events:
            self._statsd.timing("action_matching_for_event", seconds * 1000 / events)
            self._statsd.incr("action_matches_found", matches)

    @_never_raises
    def action_step_failed(self) -> None:
        self._action_step_errors.inc()

    @_never_raises
    def action_batch_failed(self) -> None:
        self._action_batch_errors.inc()

    @_never_raises
    def hook_delivery(self, kind: str, outcome: str, count: int = 1) -> None:
        """`kind` is "webhook" or "rest_hook" (or "celery" for the seed's tasks)."""
        self._hook_deliveries.labels(kind, outcome).inc(count)
        if outcome == "delivered":
            self._incr("webhook_firings" if kind == "webhook" else "rest_hook_firings")
        elif outcome == "queued_celery":
            self._incr("hooks.send_task", count)

    def _incr(self, name: str, count: int = 1) -> None:
        if self._statsd is not None:
            self._statsd.incr(name, count)


_metrics: Metrics | None = None


def get_metrics() -> Metrics:
    """This process's metrics (Prometheus only until `configure_metrics` is called)."""
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics


def configure_metrics(settings: Settings) -> Metrics:
    """Set this process's metrics up: multiprocess files if the supervisor made the directory,
    and StatsD when STATSD_HOST is set. Call once at process start, before anything is recorded."""
    client = None
    if settings.STATSD_HOST:
        client = statsd.StatsClient(
            settings.STATSD_HOST, settings.STATSD_PORT, prefix=settings.STATSD_PREFIX.rstrip(".") or None
        )
    return _start_metrics(client)


def _start_metrics(client: statsd.StatsClient | None) -> Metrics:
    global _metrics
    # prometheus_client picks its value store (and forgets the files it opened) here: at import, which
    # in the supervisor is before the directory exists, is too early.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    _metrics = Metrics(client)
    return _metrics


def use_multiprocess_dir(settings: Settings) -> Path:
    """Create this server's PROMETHEUS_MULTIPROC_DIR, PLUGIN_SERVER_DATA_DIR/prometheus/<its pid> (else a
    temporary one), and export it for the child processes. Other servers' folders there are left alone,
    but for those of servers that are gone. The supervisor calls it before starting any child;
    `remove_multiprocess_dir` on the way out."""
    try:
        directory = instance_dir(Path(settings.PLUGIN_SERVER_DATA_DIR) / "prometheus")
    except OSError:
        directory = Path(tempfile.mkdtemp(prefix="plugin-server-prometheus-"))
    os.environ[MULTIPROC_DIR_ENV] = str(directory)
    return directory


def remove_multiprocess_dir(directory: Path) -> None:
    if os.environ.get(MULTIPROC_DIR_ENV) == str(directory):
        del os.environ[MULTIPROC_DIR_ENV]
    shutil.rmtree(directory, ignore_errors=True)


def process_exited(pid: int) -> None:
    """Forget the live gauges of a child that exited (its counters keep counting in the totals)."""
    directory = os.environ.get(MULTIPROC_DIR_ENV)
    if directory:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def render() -> bytes:
    """All metrics in the Prometheus text format: merged over every process of the server when it runs
    in multiprocess mode, else this process's own."""
    directory = os.environ.get(MULTIPROC_DIR_ENV)
    if not directory:
        return generate_latest(get_metrics().registry)
    Path(directory).mkdir(parents=True, exist_ok=True)  # deleted under us: show what is recorded anew
    registry = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
