"""End-to-end benchmark: Kafka messages -> the real server (with the JS benchmark plugin) -> ClickHouse.

The events are the Celery benchmark's (100 persons, team 2, ~10 properties, a `$set` each), put on
KAFKA_CONSUMPTION_TOPIC as the capture API does (its format, keys and partitioner), one partition per
worker, on a tansu broker; the persons' distinct ids split evenly over the partitions (see
`kafka_to_postgres.py`). Each run gets a fresh Postgres database, topic, consumer group and topic
prefix; the clock starts at the first produce (by a producer already connected, of messages encoded
beforehand, as the Celery benchmark's are), once every worker has its partitions, and stops when the
consumer group has committed every message: the server commits a batch only after ClickHouse (or
Kafka, for ClickHouse's Kafka engine) took its records.

- `--store kafka` (default): EVENT_STORE=clickhouse-kafka with default settings (WORKER_CONCURRENCY
  workers): the server's part ends at the ClickHouse topics. Afterwards the test stand-in for ClickHouse's
  Kafka engine copies the topics into chDB (timed apart) and the run checks every event is in `events`
  once, with the plugin's change.
- `--store direct`: EVENT_STORE=clickhouse-direct into chDB in the worker (one worker: chDB opens its
  folder in one process at a time), read afterwards.

    .venv/bin/python -m benchmarks.kafka_to_clickhouse [--events 100000] [--runs 3] [--store kafka|direct]
        [--format current|original] [--plugin js-benchmark] [--profile FOLDER]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
from confluent_kafka import Producer
from tests.clickhouse_kafka_engine import copy_topics
from tests.e2e.server import RunningServer, running_server
from tests.kafka_broker import (
    CommittedOffsets,
    KafkaBroker,
    captured_producer,
    create_topic,
    produce_messages,
    unique_topic,
)

from benchmarks.celery_to_postgres import service_pids
from benchmarks.cpu import CpuMeter
from benchmarks.kafka_to_postgres import evenly_partitioned_people, make_captured_messages, partition_count
from benchmarks.machine import machine
from benchmarks.profiling import profiled
from benchmarks.progress import Progress
from benchmarks.services import benchmark_services, fresh_database
from plugin_server.config import Settings, load_settings
from plugin_server.sinks.clickhouse.client import open_client
from plugin_server.sinks.clickhouse.migrate import open_migrated

# tansu gives a new group its first assignment after about half the session timeout
SESSION_TIMEOUT_MS = 6000


@dataclass(frozen=True)
class Run:
    server_rate: float  # events/s, first produce to the last commit
    # The workers' CPU µs per event (all their threads), over the same span: on a shared machine a
    # steadier measure of the server's cost than the rate, which other processes' load moves.
    worker_cpu: float
    cpu: str  # every process's CPU µs per event (benchmarks/cpu.py), one line
    copy_rate: float | None  # events/s of the stand-in's copy into chDB (--store kafka)
    pace: str  # events committed in each half second (benchmarks/progress.py)


def clickhouse_settings(folder: Path, bootstrap: str, formats: str) -> Settings:
    return load_settings(
        {},
        CLICKHOUSE_HOST=f"chdb://{folder}",
        CLICKHOUSE_DATABASE="bench",
        CLICKHOUSE_KAFKA_FORMAT=formats,
        KAFKA_HOSTS=bootstrap,
        KAFKA_PREFIX=unique_topic("bench") + "_",
    )


def every_worker_assigned(server: RunningServer, workers: int) -> bool:
    """Each worker's consumer has partitions (the last rebalance is over)."""
    owners: dict[str, bool] = {}
    for line in server.log().splitlines():
        if "partitions [" in line:
            owners[line.rsplit("process=", 1)[-1]] = "assigned partitions [" in line and "[]" not in line
    return len(owners) == workers and all(owners.values())


def wait_for(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout}s")
        time.sleep(0.05)


def run_once(
    database_url: str,
    redis_url: str,
    broker: KafkaBroker,
    producer: Producer,
    events: list[tuple[bytes, bytes]],
    options: argparse.Namespace,
) -> Run:
    bootstrap = broker.bootstrap
    with tempfile.TemporaryDirectory(prefix="bench-clickhouse-") as folder:
        settings = clickhouse_settings(Path(folder) / "chdb", bootstrap, options.format)
        direct = options.store == "direct"
        workers = 1 if direct else load_settings({}).worker_count
        topic, group = unique_topic("bench"), unique_topic("bench-group")
        create_topic(bootstrap, topic, partition_count())
        env = {
            "DATABASE_URL": fresh_database(database_url, options.plugin or None),
            "REDIS_URL": redis_url,
            "KAFKA_ENABLED": "true",
            "KAFKA_HOSTS": bootstrap,
            "KAFKA_CONSUMPTION_TOPIC": topic,
            "KAFKA_CONSUMER_GROUP": group,
            "KAFKA_DEAD_LETTER_TOPIC": f"{topic}_dead_letters",
            "KAFKA_CONSUMER_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
            "KAFKA_PREFIX": settings.KAFKA_PREFIX,
            "EVENT_STORE": "clickhouse-direct" if direct else "clickhouse-kafka",
            "CLICKHOUSE_KAFKA_FORMAT": options.format,
            "CLICKHOUSE_HOST": settings.CLICKHOUSE_HOST,
            "CLICKHOUSE_DATABASE": settings.CLICKHOUSE_DATABASE,
            **({"WORKER_CONCURRENCY": "1"} if direct else {}),
        }

        with running_server(Path(folder), env) as server:
            server.wait_for_web()
            wait_for(lambda: every_worker_assigned(server, workers), "no assignment of every worker", 60)
            with (
                psycopg.connect(env["DATABASE_URL"]) as connection,
                redis.Redis.from_url(redis_url) as client,
            ):
                services = service_pids(connection, client)
            services.pop("pg poll", None)  # closed: the benchmark polls the broker, not Postgres
            kinds = {"workers": server.worker_pids(), "tansu": [broker.pid], **services}
            meter = CpuMeter(kinds, own="benchmark")
            offsets = CommittedOffsets(bootstrap, group, topic, partition_count())
            with profiling(server, options, len(events)):
                begin = time.perf_counter()
                meter.start()
                progress = Progress()
                produce_messages(producer, topic, events)
                wait_for(
                    lambda: progress.saw(offsets.read()) >= len(events), "not every event committed", 600
                )
                elapsed, use = time.perf_counter() - begin, meter.stop()
            offsets.close()
            assert server.stop() == 0
        copy_rate = None
        if not direct:
            client, _ = open_migrated(settings)
            begin = time.perf_counter()
            asyncio.run(copy_topics(client, settings, expected=len(events), timeout=120))
            copy_rate = len(events) / (time.perf_counter() - begin)
        else:
            client = open_client(settings)
        try:
            check_events(client, len(events), bool(options.plugin))
        finally:
            client.close()
    cpu = use.per_event(len(events))["workers"]
    return Run(len(events) / elapsed, cpu, use.summary(len(events)), copy_rate, progress.summary())


@contextlib.contextmanager
def profiling(server: RunningServer, options: argparse.Namespace, count: int) -> Iterator[None]:
    """py-spy on every worker (--profile): a flame graph with native frames each, worker-N.svg, from a
    second into the run for about half of it at 10,000 events/s. py-spy pauses a worker at each sample
    for its native frames, so the profiled run (the first) is slower than the others."""
    if not options.profile:
        yield
        return
    folder = Path(options.profile)
    folder.mkdir(parents=True, exist_ok=True)
    seconds = max(2, min(20, count // 20_000))
    targets = {folder / f"worker-{n + 1}.svg": pid for n, pid in enumerate(server.worker_pids())}
    with profiled(targets, seconds, delay=1.0):
        yield


def check_events(client: Any, expected: int, plugin: bool) -> None:
    """Every event in `events` once (FINAL), each with the benchmark plugin's change when it ran."""
    changed = "countIf(JSONExtractString(properties, 'upperUuid') = upper(toString(uuid)))"
    [(rows, uuids, upper)] = client.query(
        f"SELECT count(), uniqExact(uuid), {changed} FROM events FINAL"
    ).result_rows
    if (rows, uuids) != (expected, expected) or (plugin and upper != expected):
        raise RuntimeError(
            f"events: {rows} rows, {uuids} uuids, {upper} changed by the plugin, of {expected}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--store", choices=["kafka", "direct"], default="kafka")
    parser.add_argument("--format", choices=["current", "original"], default="current")
    parser.add_argument(
        "--plugin", default="js-benchmark", help="a plugin under benchmarks/plugins ('' for none)"
    )
    parser.add_argument(
        "--profile", help="a folder for flame graphs (native frames) of each worker (first run)"
    )
    options = parser.parse_args()
    runs: list[Run] = []
    with benchmark_services() as (database_url, redis_url), KafkaBroker() as broker:
        producer = captured_producer(broker.bootstrap)
        people = evenly_partitioned_people(producer, broker.bootstrap, partition_count())
        events = make_captured_messages(options.events, people)
        for number in range(options.runs):
            runs.append(run_once(database_url, redis_url, broker, producer, events, options))
            options.profile = None  # the first run only
            copy = (
                f", stand-in copy into chDB {runs[-1].copy_rate:,.0f} events/s" if runs[-1].copy_rate else ""
            )
            rate, cpu = runs[-1].server_rate, runs[-1].worker_cpu
            print(
                f"run {number + 1}: server {rate:,.0f} events/s, workers' CPU {cpu:.0f} µs per event{copy}",
                flush=True,
            )
            print(f"  {runs[-1].cpu}", flush=True)
            print(f"  {runs[-1].pace}", flush=True)
            print(f"  load average: {' '.join(f'{load:.1f}' for load in os.getloadavg())}", flush=True)
    rates = [run.server_rate for run in runs]
    plugin = options.plugin or "no plugins"
    print(
        f"kafka -> clickhouse ({options.store}, {options.format} format), {options.events} events, {plugin}, {machine()}"
    )
    print("runs (events/s): " + ", ".join(f"{rate:,.0f}" for rate in rates))
    print(f"median: {statistics.median(rates):,.0f} events/s")
    print(f"workers' CPU per event, median: {statistics.median(run.worker_cpu for run in runs):.0f} µs")


if __name__ == "__main__":
    main()
