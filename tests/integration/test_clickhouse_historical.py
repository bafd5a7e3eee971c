"""The historical export with EVENT_STORE in ClickHouse, through a worker's real plugin machinery and
job queue: "Export historical events" reads ClickHouse's `events` (FINAL, so a batch stored twice is
exported once), in time order, through a JS plugin's exportEvents. The ClickHouse reader connects at
its first read, and a ClickHouse it cannot reach is a failed read (retried), not a worker that cannot
start."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from clickhouse_connect.driver.client import Client
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings
from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.types import Element, PreparedEvent
from plugin_server.jobs.queue import PluginJob
from plugin_server.plugins.historical import ReadFailed
from plugin_server.plugins.meta.storage import PluginStorage
from plugin_server.sinks.clickhouse.reader import ClickHouseStoredEvents
from plugin_server.topology import open_sinks, open_stored_events
from tests.integration.test_historical_export import _finished, run_jobs_until
from tests.plugin_hosts import install_files, running_plugins

START = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
PLUGIN = """
export async function exportEvents(events, { cache }) {
    await cache.lpush('exported', events.map((event) => JSON.stringify([event.uuid, event.properties.n,
        event.properties.$$historical_export_source_db, event.elements.map((element) => element.tag_name)])))
}
"""


def prepared(team_id: int, n: int) -> PreparedEvent:
    at = START + timedelta(seconds=6 * n)
    return PreparedEvent(
        uuid=str(uuid.UUID(int=n + 1)),
        team_id=team_id,
        distinct_id=f"d{n}",
        ip=None,
        site_url=None,
        event="$autocapture",
        properties={"n": n},
        timestamp=at,
        now=at,
        sent_at=None,
        elements=[Element(tag_name="button", text="Go"), Element(tag_name="div")],
    )


async def test_the_export_reads_clickhouse(
    clickhouse: Client,
    clickhouse_settings: Settings,
    clean_db: psycopg.Connection[Any],
    tmp_path: Path,
    team: CreatedTeam,
    pool: AsyncConnectionPool[Any],
    aredis: aioredis.Redis,
) -> None:
    """130 events 6 s apart (13 minutes: 2 intervals, 2 pages in the first), one batch stored twice,
    and an event of another team: each of the team's events exported once, in time order."""
    await aredis.flushdb()
    events = [prepared(team.team_id, n) for n in range(130)]
    settings = {
        "EVENT_STORE": "clickhouse-direct",
        "CLICKHOUSE_HOST": clickhouse_settings.CLICKHOUSE_HOST,
        "CLICKHOUSE_DATABASE": clickhouse_settings.CLICKHOUSE_DATABASE,
    }
    async with open_sinks(clickhouse_settings.model_copy(update=settings), pool) as sinks:
        await sinks.events.write(events[:100])
        await sinks.events.write([*events[50:], prepared(team.team_id + 1, 999)])  # redelivered; another team
    files = {"plugin.json": json.dumps({"name": "historical test", "main": "index.ts"}), "index.ts": PLUGIN}
    plugin, config_id = install_files(clean_db, tmp_path, team, files, {})
    async with running_plugins(pool, aredis, **settings) as running:
        await running.plugins.registry.reload()
        start_job = PluginJob(
            type="Export historical events",
            payload={},  # no dates: from the first stored event to the last
            plugin_config_id=config_id,
            plugin_config_team=team.team_id,
            run_at=datetime.now(UTC),
        )
        await running.plugins.job_runner.run(start_job)
        await run_jobs_until(running, lambda: _finished(PluginStorage(pool, config_id)))
    exported = [
        json.loads(line)
        for line in reversed(await aredis.lrange(f"@plugin/{plugin.id}/{team.team_id}/exported", 0, -1))
    ]
    assert [n for _, n, _, _ in exported] == list(range(130))
    assert exported[0] == [events[0].uuid, 0, "clickhouse", ["button", "div"]]


async def test_the_reader_connects_at_its_first_read(
    clickhouse_settings: Settings, pool: AsyncConnectionPool[Any]
) -> None:
    settings = clickhouse_settings.model_copy(
        update={"EVENT_STORE": "clickhouse-kafka", "CLICKHOUSE_HOST": "127.0.0.1:1"}
    )
    async with open_stored_events(settings, pool) as stored:  # nothing listens there: no error yet
        assert isinstance(stored, ClickHouseStoredEvents)
        with pytest.raises(ReadFailed):
            await stored.boundaries(2)


async def test_a_failed_clickhouse_read_is_a_read_failure(clickhouse: Client) -> None:
    clickhouse.command("DROP TABLE events")
    with pytest.raises(ReadFailed):
        await ClickHouseStoredEvents(lambda: clickhouse).page(2, datetime.now(UTC), datetime.now(UTC), 0, 1)
