"""The cost of the plugin step per event: PluginRunner.process_events over micro-batches of 500.

Runs the real plugin machinery (registry, lazy VM, the plugin's runtime, hung-call marks in Redis,
$plugins_* tagging) in one process against Postgres and Valkey, for a team with the benchmark plugin
(python-benchmark, or js-benchmark for the JavaScript runtime) and for a team with no plugins; the
difference per event is the cost of running the plugin.

    .venv/bin/python -m benchmarks.plugin_step [--batches 200] [--batch-size 500] [--plugin js-benchmark] [--worker-gc]

With --worker-gc, the garbage collector is set up as the worker sets it up once started
(services/gc_tuning.py: start-up objects frozen, the young generation collected less often), after
the plugins are loaded; without it, CPython's defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.services import TEAM_ID, benchmark_services, fresh_database, running_plugins
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.plugins.run import PluginRunner
from plugin_server.services.gc_tuning import tune_garbage_collector

NO_PLUGINS_TEAM = 999


def plugin_event(
    team_id: int, name: str, distinct_id: str, properties: dict[str, Any], ip: str = "127.0.0.1"
) -> dict[str, Any]:
    """An event as the plugin step gets it from the Celery queue."""
    now = "2026-11-28T10:00:00.000Z"
    return {
        "distinct_id": distinct_id,
        "ip": ip,
        "site_url": "https://example.com",
        "team_id": team_id,
        "now": now,
        "sent_at": now,
        "uuid": uuidt(),
        "event": name,
        "timestamp": now,
        "properties": properties,
    }


def make_events(count: int, team_id: int) -> list[dict[str, Any]]:
    return [
        plugin_event(
            team_id, "$pageview", f"person-{index % 100}", {f"property_{n}": f"value {n}" for n in range(10)}
        )
        for index in range(count)
    ]


@dataclass(frozen=True)
class PerEvent:
    """Median seconds per event of a batch: on the clock, and of this process's CPU (every thread,
    V8's included), which a busy machine disturbs less."""

    wall: float
    cpu: float


async def measure(runner: PluginRunner, team_id: int, batches: int, batch_size: int) -> PerEvent:
    """Per event, over `batches` micro-batches (after a warm-up batch)."""
    await runner.process_events(make_events(batch_size, team_id))
    walls, cpus = [], []
    for _ in range(batches):
        events = make_events(batch_size, team_id)
        started, cpu_started = time.perf_counter(), time.process_time()
        results = await runner.process_events(events)
        cpus.append((time.process_time() - cpu_started) / batch_size)
        walls.append((time.perf_counter() - started) / batch_size)
        assert all(result is not None for result in results)
    return PerEvent(statistics.median(walls), statistics.median(cpus))


async def run(
    database_url: str, redis_url: str, batches: int, batch_size: int, worker_gc: bool
) -> tuple[PerEvent, PerEvent]:
    async with running_plugins(database_url, redis_url) as running:
        runner = PluginRunner(running.plugins.registry, running.services.hung)
        if worker_gc:
            await runner.process_events(make_events(batch_size, TEAM_ID))  # loads the plugin
            tune_garbage_collector()
        with_plugin = await measure(runner, TEAM_ID, batches, batch_size)
        without = await measure(runner, NO_PLUGINS_TEAM, batches, batch_size)
    return with_plugin, without


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--plugin", choices=("python-benchmark", "js-benchmark"), default="python-benchmark")
    parser.add_argument("--worker-gc", action="store_true", help="the worker's garbage collector settings")
    options = parser.parse_args()
    with benchmark_services() as (server_url, redis_url):
        database_url = fresh_database(server_url, options.plugin)
        with_plugin, without = asyncio.run(
            run(database_url, redis_url, options.batches, options.batch_size, options.worker_gc)
        )
    gc_settings = "the worker's" if options.worker_gc else "default"
    print(
        f"plugin step, batches of {options.batch_size}, median of {options.batches} batches, "
        f"{gc_settings} garbage collector settings"
    )
    print("  µs/event (clock, CPU)")
    for name, wall, cpu in (
        (f"team with the {options.plugin} plugin", with_plugin.wall, with_plugin.cpu),
        ("team without plugins", without.wall, without.cpu),
        ("cost of the plugin step", with_plugin.wall - without.wall, with_plugin.cpu - without.cpu),
    ):
        print(f"  {name + ':':40} {wall * 1e6:7.2f} {cpu * 1e6:7.2f}")


if __name__ == "__main__":
    main()
