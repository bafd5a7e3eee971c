"""The server's metrics: Prometheus values, the original's StatsD lines, and merging across processes."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import statsd
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from plugin_server.config import load_settings
from plugin_server.services.metrics import (
    EXPORT_EVENTS,
    MULTIPROC_DIR_ENV,
    ON_EVENT,
    PROCESS_EVENT,
    Metrics,
    PluginLabels,
    configure_metrics,
    get_metrics,
    process_exited,
    remove_multiprocess_dir,
    render,
    use_multiprocess_dir,
)
from tests.loopback import LoopbackUdp

PLUGIN = PluginLabels(plugin_config_id=7, plugin_name="Currency: normaliser", team_id=2)


@pytest.fixture
def udp() -> Iterator[LoopbackUdp]:
    listener = LoopbackUdp()
    yield listener
    listener.close()


def statsd_lines(udp: LoopbackUdp, count: int) -> list[str]:
    deadline = time.monotonic() + 5
    while len(udp.lines()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return udp.lines()


def without_values(lines: list[str]) -> list[str]:
    """`name:value|type` as `name|type` (timings vary)."""
    return [f"{line.split(':')[0]}|{line.split('|')[1]}" for line in lines]


def test_plugin_calls_are_counted_timed_and_their_errors_counted(udp: LoopbackUdp) -> None:
    metrics = Metrics(statsd.StatsClient("127.0.0.1", udp.port, prefix="plugin-server"))
    with metrics.plugin_call(PLUGIN, PROCESS_EVENT, calls=500) as call:
        call.errors = 3
    with metrics.plugin_call(PLUGIN, PROCESS_EVENT, calls=20):
        pass
    with pytest.raises(RuntimeError), metrics.plugin_call(PLUGIN, ON_EVENT, calls=4):
        raise RuntimeError("onEvent of the whole batch failed")
    with metrics.plugin_call(PLUGIN, EXPORT_EVENTS):
        pass
    with pytest.raises(ValueError), metrics.plugin_call(PLUGIN, "runEveryMinute"):
        raise ValueError("task failed")
    with pytest.raises(ValueError), metrics.plugin_call(PLUGIN, "jobs.sendEmail"):
        raise ValueError("job failed")

    def value(name: str, method: str) -> float | None:
        labels = {"plugin_config_id": "7", "plugin": "Currency: normaliser", "method": method}
        return metrics.registry.get_sample_value(name, labels)

    assert value("plugin_server_plugin_calls_total", PROCESS_EVENT) == 520
    assert value("plugin_server_plugin_errors_total", PROCESS_EVENT) == 3
    assert value("plugin_server_plugin_call_duration_seconds_count", PROCESS_EVENT) == 2
    assert value("plugin_server_plugin_calls_total", ON_EVENT) == 4
    assert value("plugin_server_plugin_errors_total", ON_EVENT) == 4
    assert value("plugin_server_plugin_errors_total", EXPORT_EVENTS) == 0
    assert value("plugin_server_plugin_errors_total", "runEveryMinute") == 1
    assert value("plugin_server_plugin_errors_total", "jobs.sendEmail") == 1
    assert without_values(statsd_lines(udp, 8)) == [
        "plugin-server.plugin.process_event,plugin=Currency__normaliser,teamId=2|ms",
        "plugin-server.plugin.Currency__normaliser.process_event.ERROR|c",
        "plugin-server.plugin.process_event,plugin=Currency__normaliser,teamId=2|ms",
        "plugin-server.plugin.Currency__normaliser.on_event|ms",
        "plugin-server.plugin.Currency__normaliser.on_event.ERROR|c",
        "plugin-server.plugin.export_events.success|ms",
        "plugin-server.plugin.task.schedule.runEveryMinute.7.ERROR|c",
        "plugin-server.plugin.task.job.sendEmail.7.ERROR|c",
    ]
    assert "plugin-server.plugin.Currency__normaliser.process_event.ERROR:3|c" in udp.lines()


def test_ingestion_counters_and_the_original_statsd_names(udp: LoopbackUdp) -> None:
    metrics = Metrics(statsd.StatsClient("127.0.0.1", udp.port, prefix="plugin-server"))
    metrics.events_received("celery", 500)
    metrics.batch_ingested(stored=480, dropped=15)
    metrics.dead_lettered(5)
    metrics.dead_lettered(0)
    metrics.events_set_aside(3)
    metrics.export_retry(enqueued=True)
    metrics.export_retry(enqueued=False)
    metrics.log_entries_created(12)
    metrics.worker_restarted("exited")
    metrics.worker_restarted("stalled")
    metrics.queue_sampled("posthog-plugins", 42, 3.5)
    metrics.job_queue_sampled(6)

    get = metrics.registry.get_sample_value
    assert get("plugin_server_events_received_total", {"source": "celery"}) == 500
    assert get("plugin_server_events_ingested_total") == 480
    assert get("plugin_server_events_dropped_total") == 15
    assert get("plugin_server_dead_letters_total") == 5
    assert get("plugin_server_events_set_aside_total") == 3
    assert get("plugin_server_export_retries_total", {"outcome": "enqueued"}) == 1
    assert get("plugin_server_export_retries_total", {"outcome": "dropped"}) == 1
    assert get("plugin_server_plugin_log_entries_total") == 12
    assert get("plugin_server_worker_restarts_total", {"reason": "stalled"}) == 1
    assert get("plugin_server_queue_depth", {"queue": "posthog-plugins"}) == 42
    assert get("plugin_server_queue_lag_seconds", {"queue": "posthog-plugins"}) == 3.5
    assert get("plugin_server_job_queue_depth") == 6
    assert statsd_lines(udp, 5) == [
        "plugin-server.events_added_to_dead_letter_queue:5|c",
        "plugin-server.plugin.export_events.retry_enqueued:1|c",
        "plugin-server.plugin.export_events.retry_dropped:1|c",
        "plugin-server.logs.entries_created:12|c",
        "plugin-server.alerts.stale_plugin_server_restarted:1|c",
    ]


def test_statsd_is_configured_from_the_settings(udp: LoopbackUdp) -> None:
    settings = load_settings(
        {"STATSD_HOST": "127.0.0.1", "STATSD_PORT": str(udp.port), "STATSD_PREFIX": "ps."}
    )
    configure_metrics(settings).dead_lettered(2)
    assert statsd_lines(udp, 1) == ["ps.events_added_to_dead_letter_queue:2|c"]


def _record_in_child(directory: str, received: int, stored: int) -> None:
    os.environ[MULTIPROC_DIR_ENV] = directory
    metrics = configure_metrics(load_settings({}))
    metrics.events_received("celery", received)
    metrics.batch_ingested(stored, 0)
    metrics.job_queue_sampled(received)


def test_values_of_every_process_are_merged_and_dead_processes_gauges_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROC_DIR_ENV, "")  # restored after the test
    gone = tmp_path / "prometheus" / str(gone_pid())
    gone.mkdir(parents=True)
    (gone / "counter_1.db").write_bytes(b"left by a server that is gone")
    directory = use_multiprocess_dir(load_settings({"PLUGIN_SERVER_DATA_DIR": str(tmp_path)}))
    assert directory == tmp_path / "prometheus" / str(os.getpid())
    assert os.environ[MULTIPROC_DIR_ENV] == str(directory)
    assert list(directory.iterdir()) == [] and not gone.exists()

    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_record_in_child, args=(str(directory), n, n - 1)) for n in (3, 4)]
    for child in children:
        child.start()
        child.join(30)  # one after the other, so that the second sample is the most recent
        assert child.exitcode == 0

    samples = parse(render())
    assert samples["plugin_server_events_received_total{source=celery}"] == 7
    assert samples["plugin_server_events_ingested_total"] == 5
    assert samples["plugin_server_job_queue_depth"] == 4

    for child in children:
        assert child.pid is not None
        process_exited(child.pid)
    samples = parse(render())
    assert (
        samples["plugin_server_events_received_total{source=celery}"] == 7
    )  # counters outlive their processes
    assert "plugin_server_job_queue_depth" not in samples

    remove_multiprocess_dir(directory)
    assert not directory.exists() and MULTIPROC_DIR_ENV not in os.environ


def parse(text: bytes) -> dict[str, float]:
    """`name` or `name{label=value,...}` -> value, for every sample of the Prometheus text."""
    samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_plugin_names_are_made_safe_for_statsd_lines() -> None:
    assert PluginLabels(1, "a b:c|d@e,f=g", 2).statsd_name == "a_b_c_d_e_f_g"
    assert PluginLabels(1, "geoip-plugin_v2", 2).log_context() == {"team_id": 2, "plugin_config_id": 1}


def gone_pid() -> int:
    """The pid of a process that ran and is gone."""
    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    process.start()
    process.join()
    assert process.pid is not None
    return process.pid


def _other_server(data_dir: str, ready: Any, stop: Any, rendered: Any) -> None:
    """A second server's supervisor from the same checkout: its own metrics folder, one event counted."""
    os.environ.pop(MULTIPROC_DIR_ENV, None)
    use_multiprocess_dir(load_settings({"PLUGIN_SERVER_DATA_DIR": data_dir}))
    configure_metrics(load_settings({})).events_received("celery", 1)
    ready.set()
    stop.wait(30)
    rendered.put(parse(render())["plugin_server_events_received_total{source=celery}"])


def test_two_servers_from_one_data_dir_keep_their_own_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROC_DIR_ENV, "")
    context = multiprocessing.get_context("spawn")
    ready, stop, rendered = context.Event(), context.Event(), context.Queue()
    other = context.Process(target=_other_server, args=(str(tmp_path), ready, stop, rendered))
    other.start()
    try:
        assert ready.wait(30)
        directory = use_multiprocess_dir(load_settings({"PLUGIN_SERVER_DATA_DIR": str(tmp_path)}))
        children = [context.Process(target=_record_in_child, args=(str(directory), 5, 5)) for _ in range(2)]
        for child in children:
            child.start()
            child.join(30)
        assert parse(render())["plugin_server_events_received_total{source=celery}"] == 10
        assert (tmp_path / "prometheus" / str(other.pid)).is_dir()  # started first, left alone
    finally:
        stop.set()
    assert rendered.get(timeout=30) == 1  # this server's counts are not in the other's
    other.join(30)
    remove_multiprocess_dir(directory)


def _record_after_the_directory_is_deleted(directory: str) -> None:
    os.environ[MULTIPROC_DIR_ENV] = directory
    metrics = configure_metrics(load_settings({}))
    metrics.events_received("celery", 3)
    shutil.rmtree(directory)  # e.g. another server's cleanup, as happened
    with metrics.plugin_call(PLUGIN, PROCESS_EVENT, calls=3):  # its first histogram: a new file
        pass
    get_metrics().batch_ingested(3, 0)
    with get_metrics().plugin_call(PLUGIN, PROCESS_EVENT, calls=3):
        pass


def test_a_deleted_directory_costs_no_event_and_is_counted(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    child = multiprocessing.get_context("spawn").Process(
        target=_record_after_the_directory_is_deleted, args=(str(directory),)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0  # nothing raised
    samples = parse_directory(directory)
    assert samples["plugin_server_telemetry_errors_total{method=plugin_call_done}"] == 1
    # Made again: what was recorded after the failure is there; what was before is lost with the files.
    assert samples["plugin_server_events_ingested_total"] == 3
    labels = "method=processEvent,plugin=Currency: normaliser,plugin_config_id=7"
    assert samples[f"plugin_server_plugin_calls_total{{{labels}}}"] == 6  # both calls after the deletion
    assert "plugin_server_events_received_total{source=celery}" not in samples


def parse_directory(directory: Path) -> dict[str, float]:
    registry = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return parse(generate_latest(registry))


def test_action_matching_and_hook_deliveries(udp: LoopbackUdp) -> None:
    metrics = Metrics(statsd.StatsClient("127.0.0.1", udp.port, prefix="plugin-server"))
    metrics.actions_matched(events=4, matches=3, seconds=0.002)
    metrics.hook_delivery("webhook", "delivered")
    metrics.hook_delivery("rest_hook", "delivered")
    metrics.hook_delivery("rest_hook", "retried")
    metrics.hook_delivery("celery", "queued_celery", 2)
    assert without_values(statsd_lines(udp, 5)) == [
        "plugin-server.action_matching_for_event|ms",
        "plugin-server.action_matches_found|c",
        "plugin-server.webhook_firings|c",
        "plugin-server.rest_hook_firings|c",
        "plugin-server.hooks.send_task|c",
    ]
    assert udp.lines()[0] == "plugin-server.action_matching_for_event:0.500000|ms"  # per event
    get = metrics.registry.get_sample_value
    assert get("plugin_server_action_matches_total") == 3
    assert get("plugin_server_hook_deliveries_total", {"kind": "rest_hook", "outcome": "retried"}) == 1
    assert get("plugin_server_hook_deliveries_total", {"kind": "celery", "outcome": "queued_celery"}) == 2
