"""The historical export through the real plugin machinery and job queue: "Export historical events" sends
the team's stored events in the date range, oldest first, in pages, through a JS plugin's exportEvents
(each marked $$is_historical_export_event), retries a page on RetryError, keeps its state under the
original's storage keys, goes on from where it was when its runner stopped, and registers its public job."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.jobs.queue import PluginJob
from plugin_server.plugins import historical
from plugin_server.plugins.meta.storage import PluginStorage
from tests.plugin_hosts import RunningPlugins, install_files

Db = psycopg.Connection[Any]
START = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)

# Exports into the cache; the first export of the second page asks to be retried.
PLUGIN = """
import { RetryError } from '@posthog/plugin-scaffold'
export async function exportEvents(events, { cache }) {
    if (events.some((event) => event.event === 'fail once') && (await cache.incr('failed')) === 1) {
        throw new RetryError('the warehouse is busy')
    }
    await cache.lpush('exported', events.map((event) =>
        `${event.uuid} ${event.properties.$$is_historical_export_event} ${event.properties.n}`))
}
"""


def store_events(db: Db, team: CreatedTeam, count: int) -> list[str]:
    """`count` events a minute apart from START (plus one before and one after the range)."""
    uuids = []
    for n in range(-1, count + 1):
        event_uuid = str(uuid.uuid4())
        uuids.append(event_uuid)
        name = "fail once" if n == 100 else "$pageview"
        db.execute(
            """INSERT INTO posthog_event (uuid, event, distinct_id, properties, team_id, timestamp, created_at)
               VALUES (%s, %s, 'someone', %s, %s, %s, now())""",
            (
                event_uuid,
                name,
                Jsonb({"n": n, "$ip": "1.2.3.4"}),
                team.team_id,
                START + timedelta(seconds=6 * n),
            ),
        )
    return uuids[1:-1]


async def run_jobs_until(running: RunningPlugins, done: Any, timeout: float = 60) -> None:
    stop = asyncio.Event()
    runner = asyncio.create_task(
        running.services.jobs.run_forever(running.plugins.job_runner.run, stop_event=stop, concurrency=1)
    )
    try:
        async with asyncio.timeout(timeout):
            while not await done():
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await runner


async def test_stored_events_go_through_export_events_in_pages(
    clean_db: Db,
    tmp_path: Path,
    team: CreatedTeam,
    running: RunningPlugins,
    pool: AsyncConnectionPool[Any],
    aredis: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(historical, "FIRST_RETRY_SECONDS", 0.05)
    await aredis.flushdb()
    expected = store_events(clean_db, team, 230)  # 23 minutes: 3 intervals, 2 pages in each of the first two
    files = {"plugin.json": json.dumps({"name": "historical test", "main": "index.ts"}), "index.ts": PLUGIN}
    plugin, config_id = install_files(clean_db, tmp_path, team, files, {})
    await running.plugins.registry.reload()
    storage = PluginStorage(pool, config_id)
    exported_key = f"@plugin/{plugin.id}/{team.team_id}/exported"

    end = START + timedelta(seconds=6 * 229)  # the last event's time: included
    start_job = PluginJob(
        type="Export historical events",
        payload={"dateFrom": START.isoformat(), "dateTo": end.isoformat()},
        plugin_config_id=config_id,
        plugin_config_team=team.team_id,
        run_at=datetime.now(UTC),
    )
    await running.plugins.job_runner.run(start_job)
    assert await storage.get("is_export_running") is True
    assert await storage.get("min_timestamp") == int(START.timestamp() * 1000)

    # A runner that stops after the first pages; a new one goes on from there.
    await run_jobs_until(running, lambda: _count_at_least(aredis, exported_key, 100))
    assert await aredis.llen(exported_key) < 230
    await run_jobs_until(running, lambda: _finished(storage))

    exported = [line.decode().split() for line in reversed(await aredis.lrange(exported_key, 0, -1))]
    assert [event_uuid for event_uuid, _, _ in exported] == expected  # each once, in time order
    assert {flag for _, flag, _ in exported} == {"true"}
    assert await storage.get("timestamp_cursor") == int(end.timestamp() * 1000) + 1
    [public_jobs] = clean_db.execute(
        "SELECT public_jobs FROM posthog_plugin WHERE id = %s", (plugin.id,)
    ).fetchone() or [None]
    assert public_jobs["Export historical events"]["payload"]["dateFrom"]["type"] == "date"
    await running.services.logs.flush()
    entries = [
        row[0]
        for row in clean_db.execute(
            "SELECT message FROM posthog_pluginlogentry WHERE plugin_config_id = %s", (config_id,)
        )
    ]
    assert any("the warehouse is busy" in entry and "retrying" in entry for entry in entries)
    assert "Done exporting all historical events." in entries


async def test_one_export_at_a_time_and_nothing_to_export(
    clean_db: Db, tmp_path: Path, team: CreatedTeam, running: RunningPlugins, pool: AsyncConnectionPool[Any]
) -> None:
    files = {
        "plugin.json": json.dumps({"name": "historical test", "main": "index.js"}),
        "index.js": "exports.exportEvents = async () => {}",
    }
    _, config_id = install_files(clean_db, tmp_path, team, files, {})
    await running.plugins.registry.reload()
    job = PluginJob(
        type="Export historical events",
        payload={},
        plugin_config_id=config_id,
        plugin_config_team=team.team_id,
        run_at=datetime.now(UTC),
    )
    with pytest.raises(ValueError, match="There are no events to export"):
        await running.plugins.job_runner.run(job)
    storage = PluginStorage(pool, config_id)
    await storage.set("is_export_running", True)
    await running.plugins.job_runner.run(job)  # refused quietly: one is running
    assert await storage.get("min_timestamp") is None


async def _count_at_least(aredis: aioredis.Redis, key: str, count: int) -> bool:
    return int(await aredis.llen(key)) >= count


async def _finished(storage: PluginStorage) -> bool:
    return await storage.get("is_export_running") is None
