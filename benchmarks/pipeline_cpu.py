"""The worker's pipeline in one process: its CPU per event, with no broker and no other process on the
clock, for A/B comparisons of the shared steps (decoding, plugins, rules, persons, records).

One worker's share of the Kafka benchmarks (`kafka_to_clickhouse.py`, `kafka_to_postgres.py`): the
events of 50 of their 100 persons as the capture API puts them on Kafka, decoded by the Kafka source's
codec (or, `--source celery`, as Celery messages on the Redis list, the Celery benchmark's), through the team's plugin (`js-benchmark` by default) and every ingestion rule against real
Postgres, into today's ClickHouse event records (handed to a sender that counts them: what the
producer costs is left out) or into Postgres (`--store postgres`). Batches of INGESTION_BATCH_SIZE run
one after another, so the figure is the CPU of the steps; with `--in-flight N`, N at a time in claim
order, as a worker runs TASKS_PER_WORKER (each takes its turn per team, batches.process_until_done).

The end-to-end benchmarks move with the machine's speed by up to 30 % within minutes; this one runs
for seconds, so two trees can be alternated closely:

    .venv/bin/python -m benchmarks.pipeline_cpu [--events 20000] [--rounds 5] [--plugin js-benchmark]
        [--store clickhouse|postgres] [--source kafka|celery] [--in-flight 1]

Prints this process's CPU per event (every thread, V8's included) of each round, and their minimum.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence

import uvloop

from benchmarks.celery_to_postgres import make_messages
from benchmarks.kafka_to_postgres import make_captured_messages
from benchmarks.services import benchmark_services, fresh_database, running_plugins
from plugin_server.config import load_settings
from plugin_server.ingestion.batches import process_until_done
from plugin_server.ingestion.definitions import DefinitionsManager
from plugin_server.ingestion.groups import GroupTypeManager
from plugin_server.ingestion.kafka_producer import Record
from plugin_server.ingestion.ordering import Turn, Turnstile
from plugin_server.ingestion.persons import PersonManager
from plugin_server.ingestion.pipeline import EventPipeline
from plugin_server.plugins.run import PluginRunner
from plugin_server.services.gc_tuning import tune_garbage_collector
from plugin_server.sources.celery_redis import CeleryCodec
from plugin_server.sources.kafka.codec import KafkaCodec
from plugin_server.topology import open_sinks

PEOPLE = tuple(f"person-{n}" for n in range(50))
_STORES = {
    "clickhouse": {"EVENT_STORE": "clickhouse-kafka", "CLICKHOUSE_KAFKA_FORMAT": "current"},
    "postgres": {"EVENT_STORE": "postgres"},
}


class CountingSender:
    """Takes the records as the producer would, and keeps only their number."""

    def __init__(self) -> None:
        self.records = 0

    async def send(self, records: Sequence[Record]) -> None:
        self.records += len(records)


async def _run_batches(pipeline: EventPipeline, batches: list[list[bytes]], in_flight: int) -> None:
    if in_flight == 1:
        for batch in batches:
            outcome = await pipeline.run(batch)
            assert outcome.stored == len(batch), outcome
        return
    room, turnstile = asyncio.Semaphore(in_flight), Turnstile()

    async def handle(batch: list[bytes], turn: Turn) -> None:
        try:
            outcome = await process_until_done(pipeline, batch, turn)
            assert outcome.stored == len(batch), outcome
            await turn.wait_to_acknowledge()
        finally:
            turn.acknowledged()
            await turn.finish()
            room.release()

    handling = []
    for batch in batches:
        await room.acquire()
        handling.append(asyncio.create_task(handle(batch, turnstile.ticket())))
    await asyncio.gather(*handling)


def _batches(options: argparse.Namespace) -> list[list[bytes]]:
    """A round's messages in batches: new events each time (new uuids), so that every round stores
    its events as new ones, not as redeliveries."""
    if options.source == "celery":
        messages = make_messages(options.events, PEOPLE)
    else:
        messages = [value for _, value in make_captured_messages(options.events, PEOPLE)]
    return [messages[at : at + options.batch_size] for at in range(0, len(messages), options.batch_size)]


async def _run(database_url: str, redis_url: str, options: argparse.Namespace) -> list[float]:
    sender = CountingSender()
    async with (
        running_plugins(database_url, redis_url) as running,
        # the worker's own choice of sinks; the counting sender stands in for its Kafka producer
        open_sinks(
            running.settings.model_copy(update=_STORES[options.store]), running.services.pool, sender
        ) as sinks,
    ):
        pool = running.services.pool
        pipeline = EventPipeline(
            teams=running.services.teams,
            definitions=DefinitionsManager(pool),
            groups=GroupTypeManager(pool),
            persons=PersonManager(pool, lru_size=running.settings.DISTINCT_ID_LRU_SIZE, outbox=sinks.outbox),
            sink=sinks.events,
            person_sink=sinks.persons,
            plugins=PluginRunner(running.plugins.registry, running.services.hung),
            codec=CeleryCodec() if options.source == "celery" else KafkaCodec(running.services.teams),
        )
        await pipeline.run(_batches(options)[0])  # warm-up: plugin loaded, persons made, caches filled
        tune_garbage_collector()  # as a worker does once started
        rounds = []
        for _ in range(options.rounds):
            batches = _batches(options)
            started = time.process_time()
            await _run_batches(pipeline, batches, options.in_flight)
            rounds.append((time.process_time() - started) / options.events)
    if options.store == "clickhouse":
        assert sender.records >= options.events * options.rounds, "every event's record was sent"
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000, help="events per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=load_settings({}).INGESTION_BATCH_SIZE)
    parser.add_argument(
        "--plugin", default="js-benchmark", help="a plugin under benchmarks/plugins ('' for none)"
    )
    parser.add_argument("--in-flight", type=int, default=1, help="batches at once (TASKS_PER_WORKER)")
    parser.add_argument("--store", choices=["clickhouse", "postgres"], default="clickhouse")
    parser.add_argument("--source", choices=["kafka", "celery"], default="kafka")
    options = parser.parse_args()
    with benchmark_services() as (server_url, redis_url):
        database_url = fresh_database(server_url, options.plugin or None)
        rounds = uvloop.run(_run(database_url, redis_url, options))  # as a worker runs
    plugin = options.plugin or "no plugins"
    print(
        f"pipeline CPU, {options.events} events a round, {options.source} messages, {plugin}, {options.store}, batches of {options.batch_size}, {options.in_flight} in flight"
    )
    print("rounds (µs/event): " + " · ".join(f"{value * 1e6:.1f}" for value in rounds))
    print(f"minimum: {min(rounds) * 1e6:.1f} µs/event")


if __name__ == "__main__":
    main()
