"""`events list` and `plugins logs` read ClickHouse when EVENT_STORE says events are there (on chDB, which
the command opens once this process holds no client of its folder)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings
from plugin_server.db.teams import CreatedTeam
from plugin_server.plugins.meta.logs import LogType
from plugin_server.sinks.clickhouse.client import open_client
from plugin_server.topology import open_sinks
from tests.integration.test_clickhouse_reads import entry, feed_logs
from tests.integration.test_pipeline import message, pipeline
from tests.integration.test_plugin_logs import insert_plugin_config

from .test_cli import cli


async def test_events_list_and_plugin_logs_read_clickhouse(
    database_url: str,
    pool: AsyncConnectionPool[Any],
    clean_db: psycopg.Connection[Any],
    team: CreatedTeam,
    clickhouse_settings: Settings,
) -> None:
    direct = clickhouse_settings.model_copy(update={"EVENT_STORE": "clickhouse-direct"})
    async with open_sinks(direct, pool) as sinks:  # migrates ClickHouse, and closes its client
        into_clickhouse = pipeline(pool)
        into_clickhouse.sink = sinks.events
        sent = [
            message(team.team_id, who, {"event": "seen", "properties": {"x": 1}}) for who in ("ann", "bob")
        ]
        assert (await into_clickhouse.run(sent)).stored == 2
    config = insert_plugin_config(clean_db, team)
    client = open_client(clickhouse_settings)
    try:
        await feed_logs(
            client, clickhouse_settings, [entry(config, team, 1, LogType.INFO, "from ClickHouse")]
        )
    finally:
        client.close()
    env = {
        "DATABASE_URL": database_url,
        "EVENT_STORE": "clickhouse-kafka",
        "CLICKHOUSE_HOST": clickhouse_settings.CLICKHOUSE_HOST,
        "CLICKHOUSE_DATABASE": clickhouse_settings.CLICKHOUSE_DATABASE,
    }

    def run(*args: str) -> list[str]:
        result = cli(*args, **env)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    listed = [json.loads(line) for line in await asyncio.to_thread(run, "events", "list", "--team", "2")]
    assert sorted((event["distinct_id"], event["properties"]["x"]) for event in listed) == [
        ("ann", 1),
        ("bob", 1),
    ]
    [line] = await asyncio.to_thread(run, "plugins", "logs", str(config[1]))
    assert line.endswith("from ClickHouse")

    down = cli("events", "list", "--team", "2", **{**env, "CLICKHOUSE_HOST": "127.0.0.1:9"})
    assert down.returncode == 1
    assert "cannot read the event store: ClickHouse" in down.stderr
