"""`plugin-server start` with nothing configured: its own Postgres and Valkey, kept across restarts."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import psycopg
import redis

from .server import celery_app, running_server, send_event, wait_for_count

NO_SERVICES = {"DATABASE_URL": "", "REDIS_URL": "", "WORKER_CONCURRENCY": "1"}


def test_embedded_default_creates_a_team_ingests_and_keeps_data(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    data_dir = tmp_path / "data"
    env = {**NO_SERVICES, "PLUGIN_SERVER_DATA_DIR": str(data_dir)}
    with running_server(tmp_path, env) as server:
        server.wait_for_log("All systems go", timeout=120)
        match = re.search(r"team id:\s+(\d+)\s+api token:\s+(\S+)", server.log())
        assert match, server.log()
        team_id = int(match[1])
        urls = json.loads((data_dir / "embedded.json").read_text())
        send_event(celery_app(urls["redis_url"]), team_id=team_id, distinct_id="embedded", event="hello")
        assert wait_for_count(urls["database_url"], "SELECT COUNT(*) FROM posthog_event", 1) == 1
        assert server.stop() == 0
    assert not (data_dir / "embedded.json").exists()

    with running_server(tmp_path, env) as server:
        server.wait_for_log("All systems go", timeout=120)
        assert "api token" not in server.log()
        urls = json.loads((data_dir / "embedded.json").read_text())
        with psycopg.connect(urls["database_url"]) as connection:
            assert connection.execute("SELECT COUNT(*) FROM posthog_event").fetchone() == (1,)
            assert connection.execute("SELECT COUNT(*) FROM posthog_team").fetchone() == (1,)
        with redis.Redis.from_url(urls["redis_url"]) as client:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            rewrite = client.config_get("auto-aof-rewrite-min-size")
            assert rewrite == {"auto-aof-rewrite-min-size": str(512 * 1024 * 1024)}
        assert server.stop() == 0
