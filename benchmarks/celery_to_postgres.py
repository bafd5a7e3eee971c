"""End-to-end benchmark: Celery messages in Redis -> the real server -> rows in posthog_event.

10,000 `process_event_with_plugins` messages (100 distinct persons, team 2, ~10 properties each) are
pushed to the Celery list of a running server; the clock runs from the first push until all 10,000
rows are in posthog_event. Uses DATABASE_URL / REDIS_URL when set, otherwise starts embedded servers.

    .venv/bin/python -m benchmarks.celery_to_postgres [--events 10000] [--runs 3] [--plugin python-benchmark]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from tests.kafka_broker import free_port

from benchmarks.services import TEAM_ID, benchmark_services, fresh_database, wait_for_health
from plugin_server.ingestion.celery import PROCESS_EVENT_TASK, encode_task

QUEUE = "posthog-plugins"


def event_data(index: int, now: str) -> tuple[str, dict[str, Any]]:
    """The distinct id and `data` of the benchmark's event number `index` (100 persons)."""
    person = index % 100
    data = {
        "event": "$pageview" if index % 3 else "clicked button",
        "timestamp": now,
        "properties": {
            "$current_url": f"https://example.com/page/{index % 17}",
            "$browser": "Chrome",
            "$browser_version": 120,
            "$os": "Linux",
            "$lib": "web",
            "$device_id": f"device-{person}",
            "$session_id": f"session-{person}-{index // 500}",
            "plan": "pro" if person % 2 else "free",
            "price": index % 100,
            "$set": {"email": f"person{person}@example.com"},
        },
    }
    return f"person-{person}", data


def make_messages(count: int) -> list[bytes]:
    now = datetime.now(UTC).isoformat()
    messages = []
    for index in range(count):
        distinct_id, data = event_data(index, now)
        args = [distinct_id, "127.0.0.1", "https://example.com", data, TEAM_ID, now, now]
        messages.append(encode_task(PROCESS_EVENT_TASK, args, queue=QUEUE))
    return messages


def run_once(database_url: str, redis_url: str, messages: list[bytes], plugin: str | None) -> float:
    client = redis.Redis.from_url(redis_url)
    client.delete(QUEUE)

    def push() -> None:
        for offset in range(0, len(messages), 1000):
            client.lpush(QUEUE, *messages[offset : offset + 1000])

    return timed_run(database_url, redis_url, push, len(messages), plugin)


def timed_run(
    database_url: str,
    redis_url: str,
    push: Callable[[], None],
    count: int,
    plugin: str | None,
    env: dict[str, str] | None = None,
    started: Callable[[Path], bool] = lambda _log: True,
) -> float:
    """Events/s of a server (default settings, `env` on top) on a fresh database: from the first
    message `push` sends, once the server is up and `started` says so of its log, until `count` rows
    are in posthog_event."""
    database_url = fresh_database(database_url, plugin)
    client = redis.Redis.from_url(redis_url)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "LOG_LEVEL": "warn",
        "WEB_PORT": str(web_port := free_port()),
        **(env or {}),
    }
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "server.log"
        with open(log, "wb") as output:
            server = subprocess.Popen(
                [sys.executable, "-m", "plugin_server.cli", "start"], env=env, stdout=output, stderr=output
            )
        try:
            _wait_for_ping(client)
            # the web process starts after the workers; its start-up (imports) would compete with them
            wait_for_health(f"http://127.0.0.1:{web_port}")
            deadline = time.monotonic() + 60
            while not started(log):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start consuming:\n{log.read_text()}")
                time.sleep(0.1)
            begin = time.perf_counter()
            push()
            _wait_for_rows(database_url, count)
            elapsed = time.perf_counter() - begin
            if plugin:
                _check_plugin_ran(database_url, count)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    return count / elapsed


def _wait_for_ping(client: redis.Redis, timeout: float = 60) -> None:
    client.delete("@posthog-plugin-server/ping")
    deadline = time.monotonic() + timeout
    while client.get("@posthog-plugin-server/ping") is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    time.sleep(1.0)  # workers connect after the first ping


def _wait_for_rows(database_url: str, expected: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as connection:
        while True:
            row = connection.execute("SELECT COUNT(*) FROM posthog_event").fetchone()
            if row and row[0] >= expected:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {row} of {expected} events stored")
            time.sleep(0.02)


def _check_plugin_ran(database_url: str, expected: int) -> None:
    """Every stored event carries the benchmark plugin's change (as the original's benchmark checked)."""
    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT COUNT(*) FROM posthog_event WHERE properties->>'upperUuid' = upper(uuid::text)"
        ).fetchone()
    if not row or row[0] != expected:
        raise RuntimeError(f"the plugin changed {row} of {expected} events")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--plugin", help="a plugin folder under benchmarks/plugins to enable for the team")
    options = parser.parse_args()
    messages = make_messages(options.events)
    with benchmark_services() as (database_url, redis_url):
        rates = [run_once(database_url, redis_url, messages, options.plugin) for _ in range(options.runs)]
    plugin = f"plugin {options.plugin}" if options.plugin else "no plugins"
    print(f"celery -> postgres, {options.events} events, {plugin}, default settings, {os.cpu_count()} cores")
    print("runs (events/s): " + ", ".join(f"{rate:,.0f}" for rate in rates))
    print(f"median: {statistics.median(rates):,.0f} events/s")


if __name__ == "__main__":
    main()
