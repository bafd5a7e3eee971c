"""The ClickHouse sink side alone: prepared events -> ClickHouse records -> the Kafka producer -> a broker.

What `kafka_to_clickhouse.py` measures end to end includes the whole pipeline; this isolates what comes
after it: building the records of a batch (today's or the original's format) and handing them to the
server's one producer until the broker acknowledged them, as a worker's event and person sinks do. The
events are the Kafka benchmarks' (100 persons, ~10 properties, a `$set` each), prepared by the pipeline's
rules once, before the clock starts; the persons of today's format are answered from memory (the
end-to-end benchmark reads them from Postgres).

It reports per event the wall time and the CPU time of the whole process (every thread: the event loop,
the producer's poll thread, librdkafka's), which a busy machine disturbs less than the wall time;
`--build-only` leaves the producer out; `--pipeline-work` keeps the event loop busy with plain Python
work before each batch, as the pipeline keeps a worker's; `--worker-gc` sets the garbage collector up as
a started worker has it (services/gc_tuning.py; with CPython's defaults its collections, triggered by
whatever allocates, are a large share of the time); `--profile FILE` writes cProfile's statistics of the event loop's
thread (the poll thread is not in them: compare the CPU times).

    .venv/bin/python -m benchmarks.clickhouse_sink [--events 50000] [--batch 500] [--concurrency 10]
        [--format current|original] [--rounds 3] [--build-only] [--worker-gc] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import statistics
import time
from collections.abc import Iterable
from datetime import UTC, datetime

import uvloop
from tests.kafka_broker import KafkaBroker, unique_topic

from benchmarks.kafka_to_postgres import make_events
from plugin_server.config import load_settings
from plugin_server.ingestion.kafka_producer import KafkaProducer
from plugin_server.ingestion.persons import Key, PersonRow
from plugin_server.ingestion.rules import prepare_event
from plugin_server.ingestion.types import PreparedEvent
from plugin_server.services.gc_tuning import tune_garbage_collector
from plugin_server.sinks.kafka import KafkaEventSink, KafkaPersonSink
from plugin_server.sinks.kafka.current import CurrentFormat
from plugin_server.sinks.kafka.original import OriginalFormat
from plugin_server.sinks.kafka.records import KafkaFormat

# The stand-in for the pipeline's work on a batch runs in this many steps, with an await between them.
PIPELINE_STEPS = 20


def pipeline_work(units: int) -> int:
    """Plain Python work holding the GIL (about 25 units a microsecond on a quiet core)."""
    total = 0
    for unit in range(units):
        total += unit
    return total


def prepared_events(count: int) -> list[PreparedEvent]:
    events = []
    for captured in make_events(count):
        raw = {
            **captured.data,
            "distinct_id": captured.distinct_id,
            "ip": captured.ip,
            "site_url": captured.site_url,
            "team_id": captured.team_id,
            "now": captured.now,
            "sent_at": captured.sent_at,
            "uuid": captured.uuid,
        }
        events.append(prepare_event(raw))
    return events


def known_persons(events: list[PreparedEvent]) -> dict[Key, PersonRow]:
    created = datetime.now(UTC)
    persons = {}
    for number, key in enumerate(sorted({(event.team_id, event.distinct_id) for event in events})):
        properties = {"email": f"{key[1]}@example.com", "$initial_browser": "Chrome", "plan": "pro"}
        persons[key] = PersonRow(
            number, f"0190b2a0-0000-7000-8000-{number:012x}", key[0], created, properties, False
        )
    return persons


async def measure(events: list[PreparedEvent], options: argparse.Namespace) -> tuple[float, float]:
    """(wall, CPU) microseconds per event of one round."""
    format: KafkaFormat = (CurrentFormat if options.format == "current" else OriginalFormat)(options.prefix)
    persons = known_persons(events)

    async def lookup(keys: Iterable[Key]) -> dict[Key, PersonRow]:
        return {key: persons[key] for key in keys if key in persons}

    batches = [events[start : start + options.batch] for start in range(0, len(events), options.batch)]
    producer = None if options.build_only else KafkaProducer(options.settings)
    try:
        if producer is not None:  # connect and create the topics before the clock starts
            await KafkaEventSink(producer, format, lookup).write(events[:1])
        semaphore = asyncio.Semaphore(options.concurrency)

        async def one(batch: list[PreparedEvent]) -> None:
            async with semaphore:
                for _ in range(PIPELINE_STEPS):  # the pipeline's share, awaiting between steps
                    pipeline_work(options.pipeline_work * len(batch) // PIPELINE_STEPS)
                    await asyncio.sleep(0)
                if producer is None:
                    found = await lookup({(event.team_id, event.distinct_id) for event in batch})
                    record = format.event_records(found, datetime.now(UTC))
                    for event in batch:
                        record(event)
                else:
                    await asyncio.gather(
                        KafkaPersonSink(producer, format).write([]),
                        KafkaEventSink(producer, format, lookup).write(batch),
                    )

        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(batch) for batch in batches))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        if producer is not None:
            await producer.close()
    return wall / len(events) * 1e6, cpu / len(events) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=10, help="batches in flight (TASKS_PER_WORKER)")
    parser.add_argument("--format", choices=["current", "original"], default="current")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--pipeline-work",
        type=int,
        default=0,
        help="units of Python work per event before each batch is stored (the pipeline's share: with it "
        "the event loop is busy as a worker's is, and the producer's threads wait for the GIL)",
    )
    parser.add_argument("--build-only", action="store_true", help="build the records, produce nothing")
    parser.add_argument("--worker-gc", action="store_true", help="the worker's garbage collector settings")
    parser.add_argument("--profile", help="a file for cProfile's statistics of the last round")
    options = parser.parse_args()
    events = prepared_events(options.events)
    if options.worker_gc:
        tune_garbage_collector()
    with KafkaBroker() as broker:
        options.settings = load_settings({}, KAFKA_HOSTS=broker.bootstrap)
        results = []
        for round_ in range(options.rounds):
            options.prefix = unique_topic("sink") + "_"
            profiler = cProfile.Profile() if options.profile and round_ == options.rounds - 1 else None
            if profiler:
                profiler.enable()
            results.append(uvloop.run(measure(events, options)))
            if profiler:
                profiler.disable()
                profiler.dump_stats(options.profile)
            wall, cpu = results[-1]
            load = " ".join(f"{value:.1f}" for value in os.getloadavg())
            print(
                f"round {round_ + 1}: {wall:.1f} µs wall, {cpu:.1f} µs CPU per event (load {load})",
                flush=True,
            )
    what = "records only" if options.build_only else "records to the broker"
    print(f"{options.format} format, {options.events} events in batches of {options.batch}, {what}")
    print(
        f"median: {statistics.median(r[0] for r in results):.1f} µs wall, "
        f"{statistics.median(r[1] for r in results):.1f} µs CPU per event"
    )


if __name__ == "__main__":
    main()
