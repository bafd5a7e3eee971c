"""End-to-end benchmark: Celery messages in Redis -> the real server -> rows in posthog_event.

10,000 `process_event_with_plugins` messages (100 distinct persons, team 2, ~10 properties each) are
pushed to the Celery list of a running server (the LPUSH commands encoded before the clock starts);
the clock runs from the first push until all 10,000 rows are in posthog_event. Uses DATABASE_URL /
REDIS_URL when set, otherwise starts embedded servers.
Each run prints the CPU time per event of every process taking part (benchmarks/cpu.py); `--limit`
then measures what Postgres and Python alone would need (benchmarks/limit.py), `--profile FOLDER`
records flame graphs of the workers and the web process during the first run.

    .venv/bin/python -m benchmarks.celery_to_postgres [--events 10000] [--runs 3] [--plugin python-benchmark]
        [--limit] [--profile FOLDER]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis
from tests.e2e.server import RunningServer
from tests.kafka_broker import free_port

from benchmarks.cpu import CpuMeter, CpuUse
from benchmarks.limit import measure_limit
from benchmarks.machine import machine
from benchmarks.profiling import profiled, py_spy
from benchmarks.progress import Progress
from benchmarks.services import TEAM_ID, benchmark_services, fresh_database, wait_for_health
from plugin_server.ingestion.celery import PROCESS_EVENT_TASK, encode_task

QUEUE = "posthog-plugins"
PROFILE_DELAY = 1.0  # seconds into the run
PROFILE_SECONDS = 3


PEOPLE = tuple(f"person-{person}" for person in range(100))


def event_data(index: int, captured: datetime, people: Sequence[str] = PEOPLE) -> tuple[str, dict[str, Any]]:
    """The distinct id and `data` of the benchmark's event number `index` (of one of `people`, 100
    distinct ids), captured at `captured`; each event has a timestamp of its own, a millisecond apart,
    as a client's events do."""
    person = index % len(people)
    data = {
        "event": "$pageview" if index % 3 else "clicked button",
        # as posthog-js writes it (toISOString: milliseconds, 'Z')
        "timestamp": (captured - timedelta(milliseconds=index % 100_000))
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
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
    return people[person], data


def make_messages(count: int, people: Sequence[str] = PEOPLE) -> list[bytes]:
    captured = datetime.now(UTC)
    now = captured.isoformat()
    messages = []
    for index in range(count):
        distinct_id, data = event_data(index, captured, people)
        args = [distinct_id, "127.0.0.1", "https://example.com", data, TEAM_ID, now, now]
        messages.append(encode_task(PROCESS_EVENT_TASK, args, queue=QUEUE))
    return messages


@dataclass(frozen=True)
class Run:
    rate: float  # events/s
    cpu: CpuUse  # of every process taking part, over the timed interval
    database_url: str  # the run's database, with its rows (until the next run)
    pace: str  # events stored in each half second (benchmarks/progress.py)


def message_pusher(client: redis.Redis, queue: str, messages: list[bytes]) -> Callable[[], None]:
    """A push of the messages onto `queue` as producers push them (LPUSH, 1,000 a command: the first
    is oldest), its commands encoded now. A run's clock then counts Valkey taking them and this process
    sending them (0.3 µs of CPU per message), not redis-py encoding them (4.2-4.8 µs per message, on the
    cores the server runs on): the producers of a real server run on other machines."""
    connection = client.connection_pool.make_connection()  # its own, closed once pushed
    commands = [
        connection.pack_command("LPUSH", queue, *messages[offset : offset + 1000])
        for offset in range(0, len(messages), 1000)
    ]

    def push() -> None:
        try:
            for command in commands:
                connection.send_packed_command(command)
                connection.read_response()  # raises the error Valkey answers, if any
        finally:
            connection.disconnect()

    return push


def run_once(
    database_url: str, redis_url: str, messages: list[bytes], plugin: str | None, profile: Path | None = None
) -> Run:
    client = redis.Redis.from_url(redis_url)
    client.delete(QUEUE)
    return timed_run(
        database_url,
        redis_url,
        message_pusher(client, QUEUE, messages),
        len(messages),
        plugin,
        profile=profile,
    )


def timed_run(
    database_url: str,
    redis_url: str,
    push: Callable[[], None],
    count: int,
    plugin: str | None,
    env: dict[str, str] | None = None,
    started: Callable[[Path], bool] = lambda _log: True,
    processes: Mapping[str, int] | None = None,
    profile: Path | None = None,
) -> Run:
    """Events/s of a server (default settings, `env` on top) on a fresh database, from the first
    message `push` sends, once the server is up and `started` says so of its log, until `count` rows
    are in posthog_event; with the CPU time of the server's processes, Postgres, Valkey, `processes`
    (kind -> pid) and this process. `profile`: a folder for flame graphs of the workers and the web
    process, sampled for PROFILE_SECONDS from PROFILE_DELAY seconds after the first message."""
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
            running = RunningServer(server, log, env)
            web, workers = running.web_pid(), running.worker_pids()
            with psycopg.connect(database_url, autocommit=True) as counter:
                kinds = {"supervisor": [server.pid], "workers": workers, "web": [web]}
                kinds |= service_pids(counter, client) | {
                    kind: [pid] for kind, pid in (processes or {}).items()
                }
                meter = CpuMeter(kinds, own="benchmark")
                targets = (
                    {profile / f"worker-{n + 1}.svg": pid for n, pid in enumerate(workers)} if profile else {}
                )
                targets |= {profile / "web.svg": web} if profile else {}
                with profiled(targets, PROFILE_SECONDS, PROFILE_DELAY):
                    meter.start()
                    begin = time.perf_counter()
                    progress = Progress()
                    with ThreadPoolExecutor(
                        1
                    ) as pusher:  # the pace polled from the start, not after the push
                        pushed = pusher.submit(push)
                        try:
                            _wait_for_rows(counter, count, progress, pushed)
                        except RuntimeError as error:
                            raise RuntimeError(
                                f"{error}; the server's log ends:\n{log.read_text()[-4000:]}"
                            ) from error
                    elapsed = time.perf_counter() - begin
                    cpu = meter.stop()
            if plugin:
                _check_plugin_ran(database_url, count)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    return Run(count / elapsed, cpu, database_url, progress.summary())


def service_pids(connection: psycopg.Connection[Any], client: redis.Redis) -> dict[str, list[int]]:
    """The Postgres server (its postmaster: every backend is its child) and the Valkey server, when
    they run on this machine; the backend of `connection` (the benchmark's own) apart."""
    kinds = {}
    row = connection.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    with contextlib.suppress(psutil.Error):
        backend = psutil.Process(row[0])
        if backend.name().startswith("postgres"):
            kinds["postgres"] = [backend.ppid()]
            kinds["pg poll"] = [backend.pid]
    with contextlib.suppress(psutil.Error):
        valkey = psutil.Process(int(client.info("server")["process_id"]))
        if valkey.name().startswith(("valkey", "redis")):
            kinds["valkey"] = [valkey.pid]
    return kinds


def _wait_for_ping(client: redis.Redis, timeout: float = 60) -> None:
    client.delete("@posthog-plugin-server/ping")
    deadline = time.monotonic() + timeout
    while client.get("@posthog-plugin-server/ping") is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    time.sleep(1.0)  # workers connect after the first ping


def _wait_for_rows(
    connection: psycopg.Connection[Any],
    expected: int,
    progress: Progress,
    pushed: Future[None],
    timeout: float = 300,
) -> None:
    """Until `expected` rows are in posthog_event (`progress` sees the largest id at each look), or
    raise what the push (`pushed`) raised. Polled by the largest id (an index lookup), counted only once
    that is reached: a COUNT(*) every 20 ms cost Postgres about a seventh of the CPU of a 50,000-event
    run, more the longer the run. Even the largest id cost Postgres 0.25 ms a look during a run
    (pg_stat_statements: 177 looks, 43 ms), 0.5-0.7 µs of its CPU per event, so it looks every 100 ms
    (enough for the pace's half seconds) until nine tenths are in, and every 20 ms for the end."""
    deadline = time.monotonic() + timeout
    while True:
        if pushed.done():
            pushed.result()
        row = connection.execute("SELECT max(id) FROM posthog_event").fetchone()
        seen = progress.saw(row[0] or 0) if row else 0
        if seen >= expected:
            # ids of rolled-back inserts are never used: count what is there
            row = connection.execute("SELECT COUNT(*) FROM posthog_event").fetchone()
            if row and row[0] >= expected:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {row} of {expected} events stored")
        time.sleep(0.02 if seen >= expected * 0.9 else 0.1)


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
    parser.add_argument("--limit", action="store_true", help="then measure the limit (benchmarks/limit.py)")
    parser.add_argument(
        "--profile",
        type=Path,
        help="a folder for flame graphs of the workers and the web process (first run)",
    )
    options = parser.parse_args()
    if options.profile:
        py_spy()
        options.profile.mkdir(parents=True, exist_ok=True)
    messages = make_messages(options.events)
    runs: list[Run] = []
    with benchmark_services() as (database_url, redis_url):
        for number in range(options.runs):
            runs.append(run_once(database_url, redis_url, messages, options.plugin, options.profile))
            options.profile = None  # the first run only
            print(f"run {number + 1}: {runs[-1].rate:,.0f} events/s; {runs[-1].cpu.summary(options.events)}")
            print(f"  {runs[-1].pace}")
        limit = measure_limit(database_url, runs[-1].database_url, messages) if options.limit else None
    plugin = f"plugin {options.plugin}" if options.plugin else "no plugins"
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"celery -> postgres, {options.events} events, {plugin}, default settings, {machine()}")
    print(f"load average at the end: {load}")
    print("runs (events/s): " + ", ".join(f"{run.rate:,.0f}" for run in runs))
    median = statistics.median(run.rate for run in runs)
    print(f"median: {median:,.0f} events/s")
    if limit:
        valkey = statistics.median(run.cpu.per_event(options.events).get("valkey", 0.0) for run in runs) / 1e6
        print(limit.summary())
        print(
            f"{limit.formula(valkey)}; the pipeline's median is {median / limit.events_per_second(valkey):.1%} of it"
        )


if __name__ == "__main__":
    main()
