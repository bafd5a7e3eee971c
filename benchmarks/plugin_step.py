"""The cost of the plugin step per event: PluginRunner.process_events over micro-batches of 500.

Runs the real plugin machinery (registry, lazy VM, Python runtime, hung-call marks in Redis,
$plugins_* tagging) in one process against Postgres and Valkey, for a team with the benchmark plugin
and for a team with no plugins; the difference per event is the cost of running the plugin.

    .venv/bin/python -m benchmarks.plugin_step [--batches 200] [--batch-size 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import redis.asyncio as aioredis

from benchmarks.services import TEAM_ID, benchmark_services, fresh_database
from plugin_server.config import load_settings
from plugin_server.db.postgres import open_pool
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.plugins.host import open_plugin_host
from plugin_server.plugins.run import PluginRunner
from plugin_server.plugins.tracking import CallTracker, SharedCallState
from plugin_server.services.geoip import GeoIP

NO_PLUGINS_TEAM = 999


def make_events(count: int, team_id: int) -> list[dict[str, Any]]:
    now = "2026-11-28T10:00:00.000Z"
    return [
        {
            "distinct_id": f"person-{index % 100}",
            "ip": "127.0.0.1",
            "site_url": "https://example.com",
            "team_id": team_id,
            "now": now,
            "sent_at": now,
            "uuid": uuidt(),
            "event": "$pageview",
            "timestamp": now,
            "properties": {f"property_{n}": f"value {n}" for n in range(10)},
        }
        for index in range(count)
    ]


async def measure(runner: PluginRunner, team_id: int, batches: int, batch_size: int) -> float:
    """Median seconds per event over `batches` micro-batches (after a warm-up batch)."""
    await runner.process_events(make_events(batch_size, team_id))
    timings = []
    for _ in range(batches):
        events = make_events(batch_size, team_id)
        started = time.perf_counter()
        results = await runner.process_events(events)
        timings.append((time.perf_counter() - started) / batch_size)
        assert all(result is not None for result in results)
    return statistics.median(timings)


async def run(database_url: str, redis_url: str, batches: int, batch_size: int) -> tuple[float, float]:
    settings = load_settings({}, DATABASE_URL=database_url, REDIS_URL=redis_url)
    pool = await open_pool(database_url, max_size=8)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        # tracked as in a worker
        tracker = CallTracker(SharedCallState())
        async with open_plugin_host(settings, pool, redis, geoip=GeoIP.disabled(), tracker=tracker) as host:
            await host.registry.reload()
            runner = PluginRunner(host.registry, host.hung)
            with_plugin = await measure(runner, TEAM_ID, batches, batch_size)
            without = await measure(runner, NO_PLUGINS_TEAM, batches, batch_size)
    finally:
        await redis.aclose()
        await pool.close()
    return with_plugin, without


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=500)
    options = parser.parse_args()
    with benchmark_services() as (server_url, redis_url):
        database_url = fresh_database(server_url, "python-benchmark")
        with_plugin, without = asyncio.run(run(database_url, redis_url, options.batches, options.batch_size))
    print(f"plugin step, batches of {options.batch_size}, median of {options.batches} batches")
    print(f"  team with the python-benchmark plugin: {with_plugin * 1e6:.2f} µs/event")
    print(f"  team without plugins:                  {without * 1e6:.2f} µs/event")
    print(f"  cost of the plugin step:               {(with_plugin - without) * 1e6:.2f} µs/event")


if __name__ == "__main__":
    main()
