"""Valkey's side of the Celery queue alone: claiming, reading and acknowledging micro-batches.

The queue is filled with the Celery benchmark's messages (about 1 KB each) before the clock starts; a
`ReliableQueue` then claims them in batches of `--batch` until the queue is empty, acknowledging each
batch, as a worker does. Reported per message: the CPU time of the Valkey server (its append-only file
on, as the embedded Valkey runs it) and of this process. Every message comes out once, oldest first.

    .venv/bin/python -m benchmarks.celery_claim [--messages 100000] [--batch 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import psutil
import redis
import redis.asyncio as aioredis

from benchmarks.celery_to_postgres import make_messages
from benchmarks.services import benchmark_services
from plugin_server.ingestion.redis_queue import ReliableQueue

QUEUE = "celery-claim-benchmark"


def fill(client: redis.Redis, messages: list[bytes]) -> None:
    """The messages on the queue, the first one oldest (producers LPUSH)."""
    client.delete(QUEUE)
    for start in range(0, len(messages), 1000):
        client.lpush(QUEUE, *messages[start : start + 1000])


async def drain(redis_url: str, batch: int) -> list[bytes]:
    """Every message of the queue, claimed and acknowledged batch by batch."""
    client = aioredis.Redis.from_url(redis_url)
    queue = ReliableQueue(client, QUEUE, "benchmark", visibility_timeout=60)
    taken: list[bytes] = []
    try:
        await queue.heartbeat()
        while (claimed := await queue.claim(batch, 0)) is not None:
            taken.extend(claimed.messages)
            await queue.ack(claimed)
        await queue.close()
    finally:
        await client.aclose()
    return taken


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    messages = make_messages(options.messages)
    with benchmark_services() as (_, redis_url):
        client = redis.Redis.from_url(redis_url)
        valkey = psutil.Process(int(client.info("server")["process_id"]))
        own = psutil.Process()
        print(f"celery claim, {options.messages} messages of ~1 KB, batches of {options.batch}")
        for round_number in range(1, options.rounds + 1):
            fill(client, messages)
            valkey_before, own_before, started = cpu_seconds(valkey), cpu_seconds(own), time.perf_counter()
            taken = asyncio.run(drain(redis_url, options.batch))
            elapsed = time.perf_counter() - started
            valkey_cpu, own_cpu = cpu_seconds(valkey) - valkey_before, cpu_seconds(own) - own_before
            assert taken == messages, "every message once, oldest first"
            per_message = 1e6 / len(messages)
            print(
                f"round {round_number}: {len(messages) / elapsed:,.0f} messages/s; CPU µs/message: "
                f"valkey {valkey_cpu * per_message:.2f}, this process {own_cpu * per_message:.2f}"
            )


if __name__ == "__main__":
    main()
