"""The whole server with EVENT_STORE=clickhouse-direct on the in-process chDB engine: Celery messages in, the
worker migrates ClickHouse at start and stores the events straight into its tables, and mirrors the
persons and distinct ids it commits to Postgres (their source of truth). chDB opens its folder in one
process at a time, so the data is read once the server stopped."""

from __future__ import annotations

from pathlib import Path

import orjson
import psycopg
import redis

from plugin_server.config import Settings
from plugin_server.db.teams import CreatedTeam
from plugin_server.sinks.clickhouse.client import open_client

from .server import celery_app, running_server, send_event, wait_for_count, wait_until


def test_celery_to_worker_to_clickhouse(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, clickhouse_settings: Settings
) -> None:
    queue = f"clickhouse-e2e-{tmp_path.name}"
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "WORKER_CONCURRENCY": "1",
        "DISABLE_WEB": "true",
        "PLUGINS_CELERY_QUEUE": queue,
        "EVENT_STORE": "clickhouse-direct",
        "CLICKHOUSE_HOST": clickhouse_settings.CLICKHOUSE_HOST,
        "CLICKHOUSE_DATABASE": clickhouse_settings.CLICKHOUSE_DATABASE,
    }
    app = celery_app(redis_url)
    with running_server(tmp_path, env) as server, redis.Redis.from_url(redis_url) as client:
        server.wait_for_log("All systems go")
        for n in range(20):
            send_event(
                app,
                team_id=team.team_id,
                distinct_id=f"user-{n % 4}",
                event="bought",
                properties={"n": n},
                queue=queue,
            )
        snapshot: dict[str, object] = {"$session_id": "s-1", "$snapshot_data": {"type": 3}}
        send_event(
            app,
            team_id=team.team_id,
            distinct_id="user-0",
            event="$snapshot",
            properties=snapshot,
            queue=queue,
        )
        assert wait_for_count(database_url, "SELECT COUNT(*) FROM posthog_persondistinctid", 4) == 4
        # Acknowledged means stored: the queue and its claimed batches are empty.
        wait_until(lambda: client.llen(queue) == 0 and not list(client.scan_iter(f"{queue}:unacked:*")))
        assert server.stop() == 0
    assert wait_for_count(database_url, "SELECT COUNT(*) FROM posthog_event", 0) == 0  # not in Postgres

    clickhouse = open_client(clickhouse_settings)
    try:
        events = clickhouse.query("SELECT distinct_id, properties FROM events FINAL WHERE event = 'bought'")
        assert sorted(orjson.loads(properties)["n"] for _, properties in events.result_rows) == list(
            range(20)
        )
        assert {distinct_id for distinct_id, _ in events.result_rows} == {f"user-{n}" for n in range(4)}
        recordings = clickhouse.query("SELECT session_id, snapshot_data FROM session_recording_events FINAL")
        assert recordings.result_rows == [("s-1", '{"type":3}')]
        persons = clickhouse.query("SELECT toString(id) FROM person FINAL WHERE is_deleted = 0").result_rows
        owners = clickhouse.query("SELECT distinct_id, toString(person_id) FROM person_distinct_id FINAL")
    finally:
        clickhouse.close()
    with psycopg.connect(database_url) as db:
        postgres_owners = db.execute(
            """SELECT pdi.distinct_id, p.uuid::text FROM posthog_persondistinctid pdi
               JOIN posthog_person p ON p.id = pdi.person_id"""
        ).fetchall()
        postgres_persons = db.execute("SELECT uuid::text FROM posthog_person").fetchall()
    assert sorted(persons) == sorted(postgres_persons) and len(persons) == 4
    assert sorted(owners.result_rows) == sorted(postgres_owners)
