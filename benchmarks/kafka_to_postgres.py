"""End-to-end benchmark: Kafka messages -> the real server -> rows in posthog_event, next to the same
events through the Celery list (`celery_to_postgres.py`), run alternately in one sitting.

The events are the Celery benchmark's (100 persons, team 2, ~10 properties), as the capture API puts
them on KAFKA_CONSUMPTION_TOPIC: its message format, keys and partitioner. A person's events all go to
one partition, so the 100 persons' distinct ids are picked to split evenly over the partitions (as the
many persons of a real topic do; by chance, 100 persons split 46/54 and more, and one worker waits for
the other at the end). Each Kafka run gets a new topic and consumer group on one tansu broker; the
clock starts at the first produce (by a producer already connected, of messages encoded beforehand, as
the Celery messages are), once every worker has its partitions, and stops when all rows are in
posthog_event. Default settings otherwise
(one consumer per worker, WORKER_CONCURRENCY workers).

    .venv/bin/python -m benchmarks.kafka_to_postgres [--events 100000] [--runs 3] [--plugin js-benchmark]
        [--profile FOLDER]
"""

from __future__ import annotations

import argparse
import os
import statistics
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from confluent_kafka import Producer
from tests.kafka_broker import (
    KafkaBroker,
    captured_producer,
    create_topic,
    partitions_of,
    produce_messages,
    unique_topic,
)

from benchmarks.celery_to_postgres import PEOPLE, Run, event_data, make_messages, run_once, timed_run
from benchmarks.machine import machine
from benchmarks.profiling import py_spy
from benchmarks.services import TEAM_ID, benchmark_services
from plugin_server.config import load_settings
from plugin_server.ingestion.enqueue import CapturedEvent
from plugin_server.ingestion.kafka_producer import capture_key, capture_message

# tansu gives a new group its first assignment after about half the session timeout
SESSION_TIMEOUT_MS = 6000


def make_events(count: int, people: Sequence[str] = PEOPLE) -> list[CapturedEvent]:
    captured = datetime.now(UTC)
    now = captured.isoformat()
    events = []
    for index in range(count):
        distinct_id, data = event_data(index, captured, people)
        events.append(
            CapturedEvent(
                distinct_id, "127.0.0.1", "https://example.com", data, TEAM_ID, now, now, str(uuid.uuid4())
            )
        )
    return events


def make_captured_messages(count: int, people: Sequence[str] = PEOPLE) -> list[tuple[bytes, bytes]]:
    """`make_events` as the capture API puts them on Kafka: (key, value), encoded before the clock
    starts, as the Celery benchmark's messages are."""
    return [capture_message(event) for event in make_events(count, people)]


def partition_count() -> int:
    """The benchmark topic's partitions: one per worker, at least two."""
    return max(2, load_settings({}).worker_count)


def evenly_partitioned_people(producer: Producer, bootstrap: str, partitions: int) -> list[str]:
    """As many distinct ids as PEOPLE, `person-<n>`, whose capture keys give each of `partitions`
    partitions the same number of them (to one apart)."""
    topic = unique_topic("people")
    create_topic(bootstrap, topic, partitions)
    candidates = [f"person-{n}" for n in range(len(PEOPLE) * partitions * 4)]
    found = partitions_of(producer, topic, [capture_key(TEAM_ID, name) for name in candidates])
    share = -(-len(PEOPLE) // partitions)
    taken = [0] * partitions
    people: list[str] = []
    for name, partition in zip(candidates, found, strict=True):
        if taken[partition] < share and len(people) < len(PEOPLE):
            taken[partition] += 1
            people.append(name)
    assert len(people) == len(PEOPLE), "too few candidates for an even split"
    return people


def kafka_run(
    database_url: str,
    redis_url: str,
    broker: KafkaBroker,
    producer: Producer,
    captured: list[tuple[bytes, bytes]],
    plugin: str | None,
    profile: Path | None = None,
) -> Run:
    bootstrap = broker.bootstrap
    topic = unique_topic("bench")
    workers = load_settings({}).worker_count
    create_topic(bootstrap, topic, partition_count())
    env = {
        "KAFKA_ENABLED": "true",
        "KAFKA_HOSTS": bootstrap,
        "KAFKA_CONSUMPTION_TOPIC": topic,
        "KAFKA_CONSUMER_GROUP": unique_topic("bench-group"),
        "KAFKA_DEAD_LETTER_TOPIC": f"{topic}_dead_letters",
        "KAFKA_CONSUMER_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "LOG_LEVEL": "info",  # to see the assignments
    }

    def assigned(log: Path) -> bool:
        """Every worker has partitions (the last rebalance is over)."""
        lines = [line for line in log.read_text(errors="replace").splitlines() if "partitions [" in line]
        owners = {}
        for line in lines:
            owners[line.rsplit("process=", 1)[-1]] = "assigned partitions [" in line and "[]" not in line
        return len(owners) == workers and all(owners.values())

    push = partial(produce_messages, producer, topic, captured)
    return timed_run(
        database_url, redis_url, push, len(captured), plugin, env, assigned, {"tansu": broker.pid}, profile
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--plugin", default="js-benchmark", help="a plugin under benchmarks/plugins ('' for none)"
    )
    parser.add_argument(
        "--profile", type=Path, help="a folder for flame graphs of the workers and web process (first pair)"
    )
    options = parser.parse_args()
    plugin = options.plugin or None
    if options.profile:
        py_spy()
    celery: list[float] = []
    kafka: list[float] = []
    with benchmark_services() as (database_url, redis_url), KafkaBroker() as broker:
        producer = captured_producer(broker.bootstrap)
        people = evenly_partitioned_people(producer, broker.bootstrap, partition_count())
        messages = make_messages(options.events, people)
        captured = make_captured_messages(options.events, people)
        for _ in range(options.runs):
            for name, rates, run in (
                ("celery", celery, partial(run_once, database_url, redis_url, messages, plugin)),
                (
                    "kafka",
                    kafka,
                    partial(kafka_run, database_url, redis_url, broker, producer, captured, plugin),
                ),
            ):
                profile = options.profile / name if options.profile and len(rates) == 0 else None
                if profile:
                    profile.mkdir(parents=True, exist_ok=True)
                result = run(profile=profile)
                rates.append(result.rate)
                print(f"{name} {result.rate:,.0f} events/s; {result.cpu.summary(options.events)}", flush=True)
                print(f"  {result.pace}", flush=True)
    load = os.getloadavg()
    print(f"{options.events} events, {plugin or 'no plugins'}, default settings, {machine()}")
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    for name, rates in (("celery -> postgres", celery), ("kafka -> postgres", kafka)):
        runs = ", ".join(f"{rate:,.0f}" for rate in rates)
        print(f"{name}: runs {runs} events/s; median {statistics.median(rates):,.0f}")
    print(f"kafka / celery (medians): {statistics.median(kafka) / statistics.median(celery):.2f}")


if __name__ == "__main__":
    main()
