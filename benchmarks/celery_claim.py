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

import redis
import redis.asyncio as aioredis

from benchmarks.celery_to_postgres import make_messages, message_pusher
from benchmarks.cpu import CpuMeter
from benchmarks.services import benchmark_services
from plugin_server.ingestion.redis_queue import ReliableQueue

QUEUE = "celery-claim-benchmark"


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
        valkey = int(client.info("server")["process_id"])
        print(f"celery claim, {options.messages} messages of ~1 KB, batches of {options.batch}")
        for round_number in range(1, options.rounds + 1):
            client.delete(QUEUE)
            message_pusher(client, QUEUE, messages)()
            meter = CpuMeter({"valkey": [valkey]}, own="this process")
            meter.start()
            taken = asyncio.run(drain(redis_url, options.batch))
            use = meter.stop()
            assert taken == messages, "every message once, oldest first"
            per_message = use.per_event(len(messages))
            print(
                f"round {round_number}: {len(messages) / use.wall:,.0f} messages/s; CPU µs/message: "
                f"valkey {per_message['valkey']:.2f}, this process {per_message['this process']:.2f}"
            )


if __name__ == "__main__":
    main()
