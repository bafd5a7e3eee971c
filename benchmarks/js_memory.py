"""Memory of many JavaScript plugin configs in one worker process, and what idle unloading gives back.

The js-benchmark plugin is installed once (made global) and enabled for `--configs` teams, so there
are that many plugin configs of one small plugin: each gets its own V8 isolate. Through a worker's
real plugin machinery (registry, PluginRunner), each config is set up and processes one small batch (its
team's events); the script reports the process's RSS growth per loaded config and the time per load
(transpile, isolate, setupPlugin and the first batch), and again once the isolates have been idle long
enough to compact themselves (IDLE_COMPACT_SECONDS). Then every instance is unloaded as idle
(`PluginRegistry.unload_idle`, what the PLUGIN_IDLE_UNLOAD_SECONDS sweep does), and RSS is reported
again, before and after glibc's malloc_trim returns freed memory to the system.

    .venv/bin/python -m benchmarks.js_memory [--configs 500] [--batch-size 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import statistics
import time
from dataclasses import dataclass

import psycopg

from benchmarks.plugin_step import make_events
from benchmarks.services import TEAM_ID, benchmark_services, fresh_database, running_plugins
from plugin_server.db.teams import create_organization_and_team
from plugin_server.plugins.admin import enable_plugin, find_plugin
from plugin_server.plugins.js.runtime import IDLE_COMPACT_SECONDS, JSPlugin
from plugin_server.plugins.registry import PluginRegistry
from plugin_server.plugins.run import PluginRunner

MIB = 1024 * 1024


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def malloc_trim() -> None:
    """Hand memory freed by the allocator back to the system (glibc only; elsewhere nothing)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class Result:
    configs: int
    rss_start: int
    rss_loaded: int
    rss_idle: int
    load_seconds: list[float]
    open_isolates_loaded: int
    open_isolates_unloaded: int
    rss_unloaded: int
    rss_trimmed: int
    unload_seconds: float
    rss_reloaded: int
    rss_second_trimmed: int


def prepare(database_url: str, configs: int) -> list[int]:
    """Team 2 has js-benchmark; make it global and enable it for `configs - 1` more teams."""
    team_ids = [TEAM_ID]
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("UPDATE posthog_plugin SET is_global = true WHERE name = 'js-benchmark'")
        plugin = find_plugin(connection, "js-benchmark")
        for index in range(configs - 1):
            team = create_organization_and_team(
                connection, organization_name=f"org {index}", team_name=f"team {index}"
            )
            enable_plugin(connection, plugin, team.team_id, {})
            team_ids.append(team.team_id)
    return team_ids


def open_isolates(registry: PluginRegistry) -> int:
    return sum(
        1
        for vm in registry.all()
        if isinstance(instance := vm._instance, JSPlugin) and instance._isolate is not None
    )


async def run(database_url: str, redis_url: str, team_ids: list[int], batch_size: int) -> Result:
    # the sweep is off while loading, so that nothing is unloaded before it is measured
    async with running_plugins(database_url, redis_url, PLUGIN_IDLE_UNLOAD_SECONDS=0) as running:
        registry = running.plugins.registry
        runner = PluginRunner(registry, running.services.hung)
        # warm up: the transpiler, the pools and the first isolate's one-time costs are not per config
        await runner.process_events(make_events(batch_size, team_ids[0]))
        malloc_trim()
        rss_start = rss_bytes()
        load_seconds = []
        for team_id in team_ids[1:]:
            started = time.perf_counter()
            results = await runner.process_events(make_events(batch_size, team_id))
            load_seconds.append(time.perf_counter() - started)
            assert all(result is not None and result["properties"]["processed"] for result in results)
        malloc_trim()
        rss_loaded = rss_bytes()
        open_loaded = open_isolates(registry)
        await asyncio.sleep(IDLE_COMPACT_SECONDS + 1)  # every isolate compacts itself once idle
        malloc_trim()
        rss_idle = rss_bytes()

        started = time.perf_counter()
        registry.unload_idle(0)
        await registry.settle()
        unload_seconds = time.perf_counter() - started
        gc.collect()
        rss_unloaded = rss_bytes()
        malloc_trim()
        rss_trimmed = rss_bytes()
        open_unloaded = open_isolates(registry)

        # a second round (set up again on next use, then unloaded again) shows whether memory leaks
        for team_id in team_ids:
            await runner.process_events(make_events(batch_size, team_id))
        malloc_trim()
        rss_reloaded = rss_bytes()
        registry.unload_idle(0)
        await registry.settle()
        malloc_trim()
        rss_second_trimmed = rss_bytes()
    return Result(
        configs=len(team_ids) - 1,
        rss_start=rss_start,
        rss_loaded=rss_loaded,
        rss_idle=rss_idle,
        load_seconds=load_seconds,
        open_isolates_loaded=open_loaded,
        open_isolates_unloaded=open_unloaded,
        rss_unloaded=rss_unloaded,
        rss_trimmed=rss_trimmed,
        unload_seconds=unload_seconds,
        rss_reloaded=rss_reloaded,
        rss_second_trimmed=rss_second_trimmed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=10)
    options = parser.parse_args()
    with benchmark_services() as (server_url, redis_url):
        database_url = fresh_database(server_url, "js-benchmark")
        # one more config than measured: the first one is the warm-up
        team_ids = prepare(database_url, options.configs + 1)
        result = asyncio.run(run(database_url, redis_url, team_ids, options.batch_size))
    growth = result.rss_loaded - result.rss_start
    print(
        f"{result.configs} configs of js-benchmark (one plugin, one isolate per config), batches of {options.batch_size}"
    )
    print(f"  RSS before loading:     {result.rss_start / MIB:8.1f} MiB")
    print(
        f"  RSS with all loaded:    {result.rss_loaded / MIB:8.1f} MiB  ({result.open_isolates_loaded} open isolates)"
    )
    print(f"  RSS growth per config:  {growth / result.configs / MIB:8.2f} MiB")
    idle_growth = result.rss_idle - result.rss_start
    print(
        f"  RSS once idle ({IDLE_COMPACT_SECONDS + 1:g} s later): {result.rss_idle / MIB:.1f} MiB"
        f" ({idle_growth / result.configs / MIB:.2f} MiB per config)"
    )
    print(
        f"  time per load (setup + first batch): median {statistics.median(result.load_seconds) * 1e3:.1f} ms,"
        f" p95 {statistics.quantiles(result.load_seconds, n=20)[-1] * 1e3:.1f} ms,"
        f" total {sum(result.load_seconds):.1f} s"
    )
    print(
        f"  after unloading all as idle ({result.unload_seconds:.2f} s, {result.open_isolates_unloaded} open isolates):"
        f" RSS {result.rss_unloaded / MIB:.1f} MiB, after malloc_trim {result.rss_trimmed / MIB:.1f} MiB"
        f" ({(result.rss_loaded - result.rss_trimmed) / MIB:.1f} MiB given back)"
    )

    print(
        f"  second round, all set up again on next use: RSS {result.rss_reloaded / MIB:.1f} MiB;"
        f" unloaded again: {result.rss_second_trimmed / MIB:.1f} MiB (after malloc_trim)"
    )


if __name__ == "__main__":
    main()
