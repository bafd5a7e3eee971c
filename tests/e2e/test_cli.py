"""The `plugin-server` commands other than `start`, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import psycopg
import redis

from plugin_server import __version__
from plugin_server.config import settings_help


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plugin_server.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_help_lists_every_setting_with_its_default() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for name, default, _ in settings_help():
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(name + " "))
        assert f"[{default}]" in line


def test_version() -> None:
    assert cli("--version").stdout.strip() == __version__


def test_migrate_on_an_up_to_date_database(database_url: str) -> None:
    result = cli("migrate", DATABASE_URL=database_url)
    assert (result.returncode, result.stdout.strip()) == (0, "nothing to migrate")


def test_teams_create_prints_id_and_token(database_url: str, clean_db: psycopg.Connection[Any]) -> None:
    result = cli("teams", "create", "--name", "Shop", DATABASE_URL=database_url)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(":", 1) for line in result.stdout.strip().splitlines())
    row = clean_db.execute(
        "SELECT name, api_token FROM posthog_team WHERE id = %s", (int(lines["team id"]),)
    ).fetchone()
    assert row == ("Shop", lines["api token"].strip())


def test_dead_letters_list_and_replay(redis_url: str, redis_client: redis.Redis) -> None:
    for index in range(3):
        entry = {
            "reason": f"reason {index}",
            "message": f"message {index}",
            "failed_at": "x",
            "consumer": "c",
        }
        redis_client.lpush("posthog-plugins:dead-letter", json.dumps(entry))
    listed = cli("dead-letters", "list", "--limit", "2", REDIS_URL=redis_url)
    assert [json.loads(line)["reason"] for line in listed.stdout.splitlines()] == ["reason 2", "reason 1"]
    replayed = cli("dead-letters", "replay", REDIS_URL=redis_url)
    assert replayed.stdout.strip() == "replayed 3 messages"
    assert redis_client.llen("posthog-plugins:dead-letter") == 0
    assert sorted(redis_client.lrange("posthog-plugins", 0, -1)) == [b"message 0", b"message 1", b"message 2"]
