"""The whole web app (as served) with EVENT_STORE=clickhouse-kafka on chDB: the console's team page and log
viewer, the operator API's logs and readiness read ClickHouse, where Postgres has none of those rows;
a ClickHouse that is down is a 503 and a failed readiness check, while the rest keeps working."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import psycopg
import pytest
import redis.asyncio as aioredis
from clickhouse_connect.driver.client import Client
from psycopg_pool import AsyncConnectionPool

from plugin_server.config import Settings, load_settings
from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.enqueue import open_enqueuer
from plugin_server.plugins.meta.logs import LogType
from plugin_server.topology import open_reads, open_sinks
from plugin_server.web.app import create_app
from plugin_server.web.context import WebContext
from tests.integration.test_clickhouse_reads import entry, feed_logs
from tests.integration.test_pipeline import message, pipeline
from tests.integration.test_plugin_logs import insert_plugin_config

Db = psycopg.Connection[Any]
TOKEN = "console-clickhouse-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Login = Callable[[Settings], Any]


@pytest.fixture
async def logged_in(
    pool: AsyncConnectionPool[Any], aredis: aioredis.Redis, database_url: str
) -> AsyncIterator[Login]:
    """Makes a client of the web app with these settings, logged in to the console."""
    async with contextlib.AsyncExitStack() as stack:

        async def login(settings: Settings) -> httpx.AsyncClient:
            settings = settings.model_copy(update={"ADMIN_TOKEN": TOKEN})
            reads = await stack.enter_async_context(open_reads(settings, database_url))
            app = create_app(WebContext(settings, pool, aredis, open_enqueuer(settings, aredis), reads=reads))
            transport = httpx.ASGITransport(app=app)
            client = httpx.AsyncClient(transport=transport, base_url="http://console.test")
            await stack.enter_async_context(client)
            answer = await client.post("/console/login", data={"token": TOKEN, "next": "/console/teams"})
            assert answer.status_code == 303, answer.text
            return client

        yield login


async def test_the_console_and_operator_api_read_clickhouse(
    logged_in: Login,
    clickhouse: Client,
    clickhouse_settings: Settings,
    pool: AsyncConnectionPool[Any],
    team: CreatedTeam,
    clean_db: Db,
    kafka: str,
) -> None:
    direct = clickhouse_settings.model_copy(update={"EVENT_STORE": "clickhouse-direct"})
    async with open_sinks(direct, pool) as sinks:
        into_clickhouse = pipeline(pool)
        into_clickhouse.sink = sinks.events
        messages = [
            message(team.team_id, "alice", {"event": "signed up"}),
            message(team.team_id, "bob", {"event": "paid"}),
        ]
        assert (await into_clickhouse.run(messages)).stored == 2
    config = insert_plugin_config(clean_db, team)
    entries = [entry(config, team, 1, LogType.INFO, "started"), entry(config, team, 2, LogType.ERROR, "boom")]
    await feed_logs(clickhouse, clickhouse_settings, entries)
    assert clean_db.execute("SELECT count(*) FROM posthog_event").fetchone() == (0,)
    assert clean_db.execute("SELECT count(*) FROM posthog_pluginlogentry").fetchone() == (0,)

    kafka_mode = {"EVENT_STORE": "clickhouse-kafka", "KAFKA_HOSTS": kafka}
    client = await logged_in(clickhouse_settings.model_copy(update=kafka_mode))
    page = (await client.get(f"/console/teams/{team.team_id}")).text
    assert "<b>signed up</b>" in page and "<code>bob</code>" in page
    only_alice = (await client.get(f"/console/teams/{team.team_id}", params={"distinct_id": "al"})).text
    assert "<code>alice</code>" in only_alice and "<code>bob</code>" not in only_alice

    config_id = config[1]
    viewer = (await client.get(f"/console/plugin-configs/{config_id}/logs", params={"level": "error"})).text
    assert re.findall(r'<span class="message">([^<]*)</span>', viewer) == ["boom"]
    api = await client.get(f"/api/admin/plugin-configs/{config_id}/logs", headers=AUTH)
    assert [logged["message"] for logged in api.json()] == ["started", "boom"]
    after = await client.get(
        f"/api/admin/plugin-configs/{config_id}/logs", params={"after": entries[0].id}, headers=AUTH
    )
    assert [logged["id"] for logged in after.json()] == [entries[1].id]

    # Ready (the in-process engine is not probed: see the down test for the probe).
    ready = (await client.get("/_ready")).json()
    assert ready["status"] == "ready" and ready["checks"]["clickhouse"] == {"ok": True}, ready


async def test_a_clickhouse_that_is_down_is_a_503_and_not_ready(
    logged_in: Login, team: CreatedTeam, kafka: str
) -> None:
    nothing_there = "127.0.0.1:9"
    down = load_settings({}, EVENT_STORE="clickhouse-kafka", KAFKA_HOSTS=kafka, CLICKHOUSE_HOST=nothing_there)
    client = await logged_in(down)
    answer = await client.get(f"/console/teams/{team.team_id}")
    assert answer.status_code == 503
    assert "the event store is unavailable" in answer.text
    ready = await client.get("/_ready")
    assert ready.status_code == 503
    assert ready.json()["failed"] == ["clickhouse"]
    assert (await client.get("/console/teams")).status_code == 200  # what Postgres holds is still shown
