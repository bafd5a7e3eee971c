"""The running server's metrics and logs: /metrics of the web process merges the supervisor's and every
worker's values, StatsD gets the original's names, and JSON log lines carry the event's context."""

from __future__ import annotations

import json
import os
import shutil
import signal
import textwrap
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from plugin_server.db.teams import CreatedTeam
from plugin_server.plugins.admin import enable_plugin, install_plugin
from tests.conftest import TEAM_ID
from tests.e2e.server import RunningServer, celery_app, running_server, send_event, wait_for_count, wait_until
from tests.loopback import LoopbackUdp
from tests.unit.test_metrics import parse

PLUGIN = """
async def process_event(event, meta):
    if event["event"] == "drop me":
        return None
    if event["event"] == "boom":
        raise ValueError("boom!")
    return event


async def on_event(event, meta):
    pass
"""


def install_sorter(db: psycopg.Connection[Any], folder: Path, team_id: int) -> int:
    plugin = folder / "sorter"
    plugin.mkdir()
    (plugin / "plugin.json").write_text(json.dumps({"name": "sorter", "main": "index.py"}))
    (plugin / "index.py").write_text(textwrap.dedent(PLUGIN))
    return enable_plugin(db, install_plugin(db, plugin), team_id, {}).id


def scrape(server: RunningServer) -> dict[str, float]:
    response = httpx.get(f"{server.web_url}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.content)


def test_metrics_statsd_and_logs_of_a_running_server(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    team: CreatedTeam,
    clean_db: psycopg.Connection[Any],
    redis_client: redis.Redis,
) -> None:
    config_id = install_sorter(clean_db, tmp_path, team.team_id)
    statsd = LoopbackUdp()
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "WORKER_CONCURRENCY": "2",
        "STATSD_HOST": "127.0.0.1",
        "STATSD_PORT": str(statsd.port),
        "LOG_FORMAT": "json",
        "PLUGIN_SERVER_DATA_DIR": str(tmp_path / "data"),
    }
    app = celery_app(redis_url)
    with running_server(tmp_path, env) as server:
        server.wait_for_log("All systems go")
        server.wait_for_web()
        for index in range(6):
            send_event(app, team_id=team.team_id, distinct_id=f"user-{index}", event="$pageview")
        for name in ("drop me", "drop me", "boom"):
            send_event(app, team_id=team.team_id, distinct_id="user-0", event=name)
        send_event(app, team_id=999, distinct_id="nobody", event="no such team")
        redis_client.lpush("posthog-plugins", b"this is not json")
        assert wait_for_count(database_url, "SELECT COUNT(*) FROM posthog_event", 7) == 7

        plugin = f'method="{{}}",plugin="sorter",plugin_config_id="{config_id}"'.replace('"', "")
        expected = {
            "plugin_server_events_received_total{source=celery}": 11,
            "plugin_server_events_ingested_total": 7,
            "plugin_server_events_dropped_total": 2,
            "plugin_server_dead_letters_total": 2,
            f"plugin_server_plugin_calls_total{{{plugin.format('processEvent')}}}": 9,
            f"plugin_server_plugin_errors_total{{{plugin.format('processEvent')}}}": 1,
            f"plugin_server_plugin_calls_total{{{plugin.format('onEvent')}}}": 7,
            f"plugin_server_plugin_errors_total{{{plugin.format('onEvent')}}}": 0,
            "plugin_server_queue_depth{queue=posthog-plugins}": 0,
            "plugin_server_job_queue_depth": 0,
        }

        def all_counted() -> dict[str, float] | None:
            samples = scrape(server)
            counted = all(samples.get(name) == value for name, value in expected.items())
            # The plugin's error is a plugin log entry, stored about a second later.
            return (
                samples if counted and samples.get("plugin_server_plugin_log_entries_total", 0) >= 1 else None
            )

        try:
            samples = wait_until(all_counted, timeout=30)
        except AssertionError:
            raise AssertionError(f"metrics: {scrape(server)}") from None
        assert (
            samples[f"plugin_server_plugin_call_duration_seconds_count{{{plugin.format('processEvent')}}}"]
            >= 1
        )
        assert samples["plugin_server_queue_lag_seconds{queue=posthog-plugins}"] == 0

        os.kill(server.worker_pids()[0], signal.SIGKILL)
        wait_until(lambda: scrape(server).get("plugin_server_worker_restarts_total{reason=exited}") == 1)
        # The killed worker's counts stay in the totals.
        assert scrape(server)["plugin_server_events_ingested_total"] == 7
        log = server.log()
    statsd_lines = statsd.lines()
    statsd.close()

    def counted(name: str) -> int:
        return sum(
            int(line.split(":")[1].split("|")[0]) for line in statsd_lines if line.split(":")[0] == name
        )

    assert counted("plugin-server.events_added_to_dead_letter_queue") == 2
    assert counted("plugin-server.plugin.sorter.process_event.ERROR") == 1
    assert counted("plugin-server.logs.entries_created") >= 1
    assert any(
        line.startswith(f"plugin-server.plugin.process_event,plugin=sorter,teamId={team.team_id}:")
        for line in statsd_lines
    )
    assert any(line.startswith("plugin-server.plugin.sorter.on_event:") for line in statsd_lines)

    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    dead_letters = [line for line in lines if line["event"].startswith("dead letter:")]
    no_team = next(line for line in dead_letters if line.get("team_id") == 999)
    assert no_team["process"].startswith("worker-") and no_team["level"] == "warning"
    assert len(no_team["event_uuid"]) == 36
    failed = next(
        line
        for line in lines
        if "plugin sorter" in line["event"]
        and "failed in processEvent" in line["event"]
        and "1 event(s) of the batch go on without its change (not retried)" in line["event"]
    )
    assert (failed["team_id"], failed["plugin_config_id"]) == (team.team_id, config_id)


@pytest.fixture
def sorter(tmp_path: Path, team: CreatedTeam, clean_db: psycopg.Connection[Any]) -> int:
    """The sorter plugin enabled for team 2; its config id."""
    return install_sorter(clean_db, tmp_path, team.team_id)


def test_servers_from_one_checkout_keep_their_own_metrics_and_a_lost_directory_costs_no_event(
    tmp_path: Path, database_url: str, redis_url: str, sorter: int, redis_client: redis.Redis
) -> None:
    data = tmp_path / "data"
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "WORKER_CONCURRENCY": "1",
        "PLUGIN_SERVER_DATA_DIR": str(data),
    }
    app = celery_app(redis_url)
    with running_server(tmp_path, env) as first:
        first.wait_for_log("All systems go")
        own = data / "prometheus" / str(first.process.pid)
        assert own.is_dir()
        with running_server(tmp_path, {**env, "DISABLE_WEB": "1"}) as second:
            second.wait_for_log("All systems go")
            assert (data / "prometheus" / str(second.process.pid)).is_dir() and own.is_dir()
            assert second.stop() == 0
        assert own.is_dir() and not (data / "prometheus" / str(second.process.pid)).exists()

        shutil.rmtree(own)  # what the other server's start used to do
        for index in range(6):
            send_event(app, team_id=TEAM_ID, distinct_id=f"user-{index}", event="$pageview")
        assert wait_for_count(database_url, "SELECT COUNT(*) FROM posthog_event", 6) == 6
        assert redis_client.llen("posthog-plugins:dead-letter") == 0

        def counted() -> dict[str, float] | None:
            samples = scrape(first)
            # Whichever recording first finds the directory gone counts the failure.
            failed = sum(
                v for k, v in samples.items() if k.startswith("plugin_server_telemetry_errors_total")
            )
            return (
                samples if failed >= 1 and samples.get("plugin_server_events_ingested_total") == 6 else None
            )

        try:
            wait_until(counted, timeout=30)
        except AssertionError:
            raise AssertionError(f"metrics: {scrape(first)}") from None
        assert "recording the metric" in first.log() and "failed (events go on" in first.log()
