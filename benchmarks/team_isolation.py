"""One team's runaway plugin against another team's latency, through the real server.

Team 3 has a JavaScript plugin whose processEvent loops on every event (the loop guard stops it at
TASK_TIMEOUT); team 2 has the ordinary benchmark plugin. For `--seconds`, Celery messages for both
teams are pushed to the queue of a running server at steady rates; a poller notes when each row
appears in posthog_event. Reported: team 2's queue-to-row latency (p50, p99, max) and how many of
team 3's events were stored meanwhile. Uses DATABASE_URL / REDIS_URL when set, otherwise starts
embedded servers.

    .venv/bin/python -m benchmarks.team_isolation [--seconds 30] [--task-timeout 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime

import psycopg
import redis
from tests.kafka_broker import free_port

from benchmarks.celery_to_postgres import QUEUE, _wait_for_ping
from benchmarks.machine import machine
from benchmarks.services import PLUGINS, TEAM_ID, benchmark_services, fresh_database, wait_for_health
from plugin_server.db.teams import create_organization_and_team
from plugin_server.ingestion.celery import PROCESS_EVENT_TASK, encode_task
from plugin_server.plugins.admin import enable_plugin, install_plugin

SLOW_TEAM_ID = 3
POLL_SECONDS = 0.01
LOOK_BACK_ROWS = 1000


def message(team_id: int, event_uuid: str, index: int) -> bytes:
    now = datetime.now(UTC).isoformat()
    data = {
        "event": "$pageview",
        "uuid": event_uuid,
        "timestamp": now,
        "properties": {"$current_url": f"https://example.com/{index % 7}", "index": index},
    }
    args = [f"person-{index % 20}", "127.0.0.1", "https://example.com", data, team_id, now, now]
    return encode_task(PROCESS_EVENT_TASK, args, queue=QUEUE)


def prepare_database(server_url: str) -> str:
    database_url = fresh_database(server_url, "js-benchmark", name="plugin_server_bench_isolation")
    with psycopg.connect(database_url, autocommit=True) as connection:
        slow = create_organization_and_team(connection, team_id=SLOW_TEAM_ID)
        looping = install_plugin(connection, PLUGINS / "js-loop", organization_id=slow.organization_id)
        enable_plugin(connection, looping, SLOW_TEAM_ID, {})
    return database_url


class RowWatcher:
    """Notes the time each event uuid first appears in posthog_event (polling by row id)."""

    def __init__(self, database_url: str) -> None:
        self.seen: dict[str, tuple[int, float]] = {}
        self._database_url = database_url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RowWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last_id = 0
        with psycopg.connect(self._database_url, autocommit=True) as connection:
            while not self._stop.is_set():
                # Rows commit out of id order (batches are written concurrently): look back a little.
                rows = connection.execute(
                    "SELECT id, uuid::text, team_id FROM posthog_event WHERE id > %s",
                    (last_id - LOOK_BACK_ROWS,),
                ).fetchall()
                now = time.perf_counter()
                for row_id, event_uuid, team_id in rows:
                    self.seen.setdefault(event_uuid, (team_id, now))
                    last_id = max(last_id, row_id)
                time.sleep(POLL_SECONDS)


def run(database_url: str, redis_url: str, options: argparse.Namespace) -> None:
    client = redis.Redis.from_url(redis_url)
    client.delete(QUEUE)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "LOG_LEVEL": "error",
        "TASK_TIMEOUT": str(options.task_timeout),
        "WEB_PORT": str(web_port := free_port()),
    }
    sent: dict[str, float] = {}
    slow_sent = 0
    with tempfile.TemporaryFile() as log, RowWatcher(database_url) as rows:
        server = subprocess.Popen(
            [sys.executable, "-m", "plugin_server.cli", "start"], env=env, stdout=log, stderr=log
        )
        try:
            _wait_for_ping(client)
            wait_for_health(f"http://127.0.0.1:{web_port}")
            warm_up = str(uuid.uuid4())
            client.lpush(QUEUE, message(TEAM_ID, warm_up, 0))
            _wait_for(lambda: warm_up in rows.seen, 60)
            started = time.perf_counter()
            index = 0
            while (elapsed := time.perf_counter() - started) < options.seconds:
                index += 1
                event_uuid = str(uuid.uuid4())
                sent[event_uuid] = time.perf_counter()
                client.lpush(QUEUE, message(TEAM_ID, event_uuid, index))
                if elapsed * options.slow_rate >= slow_sent:
                    slow_sent += 1
                    client.lpush(QUEUE, message(SLOW_TEAM_ID, str(uuid.uuid4()), index))
                time.sleep(max(0.0, started + index / options.rate - time.perf_counter()))
            _wait_for(lambda: all(event_uuid in rows.seen for event_uuid in sent), 120)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    # (latency, when it was sent into the run), slowest first
    timed = sorted(
        ((rows.seen[event_uuid][1] - at, at - started) for event_uuid, at in sent.items()), reverse=True
    )
    latencies = sorted(latency for latency, _ in timed)
    slow_stored = sum(1 for team_id, _ in rows.seen.values() if team_id == SLOW_TEAM_ID)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(
        f"team {TEAM_ID}: {len(latencies)} events at {options.rate:g}/s; team {SLOW_TEAM_ID} (looping plugin): "
        f"{slow_sent} events at {options.slow_rate:g}/s, {slow_stored} stored by the end; "
        f"TASK_TIMEOUT={options.task_timeout:g}, {machine()}"
    )
    print(
        f"team {TEAM_ID} queue-to-row latency: p50 {statistics.median(latencies) * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
    )
    print(
        "slowest (latency s @ s into the run): " + ", ".join(f"{lat:.2f}@{at:.1f}" for lat, at in timed[:8])
    )


def _wait_for(condition: object, timeout: float) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for events to be stored")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rate", type=float, default=20, help="team 2's events per second")
    parser.add_argument("--slow-rate", type=float, default=0.5, help="team 3's events per second")
    parser.add_argument("--task-timeout", type=float, default=5)
    options = parser.parse_args()
    with benchmark_services() as (server_url, redis_url):
        run(prepare_database(server_url), redis_url, options)


if __name__ == "__main__":
    main()
