"""The whole server as a process: Celery messages in, rows out, on real Postgres and Valkey."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import redis

from plugin_server.db.teams import CreatedTeam

from .server import celery_app, claimed, running_server, send_event, wait_for_count

COUNT_EVENTS = "SELECT COUNT(*) FROM posthog_event"


def _env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "WORKER_CONCURRENCY": "2", **extra}


def test_celery_events_are_ingested_with_persons(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, redis_client: redis.Redis
) -> None:
    app = celery_app(redis_url)
    with running_server(tmp_path, _env(database_url, redis_url)) as server:
        server.wait_for_log("All systems go")
        for index in range(20):
            send_event(
                app,
                team_id=team.team_id,
                distinct_id=f"user-{index % 4}",
                event="$pageview",
                properties={"$set": {"plan": "pro"}, "n": index},
            )
        assert wait_for_count(database_url, COUNT_EVENTS, 20) == 20
        assert server.stop() == 0
    with psycopg.connect(database_url) as connection:
        persons = connection.execute("SELECT COUNT(*) FROM posthog_person").fetchone()
        plans = connection.execute("SELECT DISTINCT properties->>'plan' FROM posthog_person").fetchall()
        ips = connection.execute("SELECT DISTINCT properties->>'$ip' FROM posthog_event").fetchall()
    assert persons == (4,)
    assert plans == [("pro",)]
    assert ips == [("127.0.0.1",)]
    assert redis_client.llen("posthog-plugins") == 0
    assert "All systems go" in server.log()


def test_both_celery_protocols_are_accepted(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam
) -> None:
    with running_server(tmp_path, _env(database_url, redis_url)) as server:
        server.wait_for_log("All systems go")
        send_event(celery_app(redis_url, protocol=1), team_id=team.team_id, distinct_id="v1", event="one")
        send_event(celery_app(redis_url, protocol=2), team_id=team.team_id, distinct_id="v2", event="two")
        assert wait_for_count(database_url, COUNT_EVENTS, 2) == 2
    with psycopg.connect(database_url) as connection:
        names = {row[0] for row in connection.execute("SELECT event FROM posthog_event")}
    assert names == {"one", "two"}


def test_bad_messages_go_to_the_dead_letter_list_and_consumption_goes_on(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, redis_client: redis.Redis
) -> None:
    app = celery_app(redis_url)
    with running_server(tmp_path, _env(database_url, redis_url)) as server:
        server.wait_for_log("All systems go")
        redis_client.lpush("posthog-plugins", b"this is not json")
        app.send_task("posthog.tasks.unknown", args=[], queue="posthog-plugins")
        send_event(app, team_id=999, distinct_id="x", event="no such team")
        send_event(app, team_id=team.team_id, distinct_id="ok", event="good")
        assert wait_for_count(database_url, COUNT_EVENTS, 1) == 1
        deadline = time.monotonic() + 30
        while redis_client.llen("posthog-plugins:dead-letter") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    letters = [json.loads(raw) for raw in redis_client.lrange("posthog-plugins:dead-letter", 0, -1)]
    reasons = " | ".join(letter["reason"] for letter in letters)
    assert len(letters) == 3, reasons
    assert "No team found with ID 999" in reasons
    assert "posthog.tasks.unknown" in reasons


def test_a_killed_worker_loses_nothing(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, redis_client: redis.Redis
) -> None:
    """kill -9 of the workers while they hold unacknowledged batches: every event is stored once.

    The workers are frozen (SIGSTOP) just before the kill, so that the test sees the kill land
    mid-stream: some events stored but not all, and claimed batches not acknowledged yet."""
    app = celery_app(redis_url)
    total = 3000
    for index in range(total):
        send_event(
            app, team_id=team.team_id, distinct_id=f"p{index % 50}", event="e", properties={"i": index}
        )
    # Small batches, so that ingesting all takes seconds; no web process, so that finding the workers
    # is quick (on a busy machine the events were all stored before the kill).
    env = _env(database_url, redis_url, INGESTION_BATCH_SIZE="20", TASKS_PER_WORKER="2", DISABLE_WEB="true")
    with running_server(tmp_path, env) as server:
        server.wait_for_log("All systems go")
        workers = server.worker_pids()
        wait_for_count(database_url, COUNT_EVENTS, 200)
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        in_flight = claimed(redis_client)
        with psycopg.connect(database_url) as connection:
            stored_at_kill = connection.execute(COUNT_EVENTS).fetchone()[0]  # type: ignore[index]
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        assert 0 < stored_at_kill < total, "the kill must land while events are still being ingested"
        assert in_flight > 0, "the killed workers must hold claimed, unacknowledged events"
        server.wait_for_log("starting it again")
        assert wait_for_count(database_url, COUNT_EVENTS, total, timeout=120) == total
        # Batches stored by a killed worker but not acknowledged are requeued and stored again (the
        # write is idempotent): wait for that to finish rather than for a fixed time.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            redis_client.llen("posthog-plugins") or redis_client.keys("posthog-plugins:unacked:*")
        ):
            time.sleep(0.2)
    with psycopg.connect(database_url) as connection:
        stored = connection.execute(
            "SELECT COUNT(*), COUNT(DISTINCT properties->>'i') FROM posthog_event"
        ).fetchone()
    assert stored == (total, total)
    assert redis_client.llen("posthog-plugins") == 0
    assert not redis_client.keys("posthog-plugins:unacked:*")


def test_healthcheck_reads_the_ping_key(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, redis_client: redis.Redis
) -> None:
    env = {**os.environ, **_env(database_url, redis_url, DISABLE_WEB="true")}
    command = [sys.executable, "-m", "plugin_server.cli", "healthcheck"]
    assert subprocess.run(command, env=env, capture_output=True, check=False).returncode == 1
    with running_server(tmp_path, _env(database_url, redis_url, DISABLE_WEB="true")) as server:
        server.wait_for_log("All systems go")
        deadline = time.monotonic() + 10
        while redis_client.get("@posthog-plugin-server/ping") is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert subprocess.run(command, env=env, capture_output=True, check=False).returncode == 0
        assert redis_client.get("@posthog-plugin-server/version")


def test_idle_mode_connects_to_nothing(tmp_path: Path) -> None:
    env = {
        "PLUGIN_SERVER_IDLE": "true",
        "DATABASE_URL": "postgres://nowhere.invalid/x",
        "REDIS_URL": "redis://nowhere.invalid",
    }
    with running_server(tmp_path, env) as server:
        server.wait_for_log("disengaged", timeout=20)
        assert server.stop() == 0


def test_an_invalid_setting_stops_startup_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "WORKER_CONCURRENCY": "lots"}
    result = subprocess.run(
        [sys.executable, "-m", "plugin_server.cli", "start"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "WORKER_CONCURRENCY='lots'" in result.stderr


def test_a_stalled_worker_is_restarted_and_its_batch_redelivered(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, redis_client: redis.Redis
) -> None:
    """SIGSTOP freezes the only worker while it holds a batch; the staleness check replaces it."""
    app = celery_app(redis_url)
    env = _env(database_url, redis_url, WORKER_CONCURRENCY="1", STALENESS_RESTART_SECONDS="2")
    with running_server(tmp_path, env) as server:
        server.wait_for_log("All systems go")
        send_event(app, team_id=team.team_id, distinct_id="a", event="before")
        assert wait_for_count(database_url, COUNT_EVENTS, 1) == 1
        (worker,) = server.worker_pids()
        os.kill(worker, signal.SIGSTOP)
        for index in range(10):
            send_event(app, team_id=team.team_id, distinct_id="a", event="after", properties={"i": index})
        server.wait_for_log("ingested nothing", timeout=30)
        assert wait_for_count(database_url, COUNT_EVENTS, 11) == 11
        assert worker not in server.worker_pids()
