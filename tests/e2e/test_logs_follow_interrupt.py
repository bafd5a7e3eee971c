"""`plugin-server plugins logs --follow` stops at Ctrl-C even while entries pour in (each poll then finds
a full page, so it never pauses between queries: the interrupt lands in a query or in printing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from plugin_server.db.teams import CreatedTeam
from tests.e2e.test_plugins_cli import PLUGINS, Db, ok

LINES_BEFORE_INTERRUPT = 300


def write_logs(database_url: str, config_id: int, plugin_id: int, stop: threading.Event) -> None:
    """Insert log entries in pages of 50 until `stop` is set."""
    at = datetime(2024, 5, 1, tzinfo=UTC)
    with psycopg.connect(database_url, autocommit=True) as connection:
        while not stop.is_set():
            rows: list[tuple[Any, ...]] = []
            for _ in range(50):
                at += timedelta(milliseconds=1)
                rows.append(
                    (uuid.uuid4(), plugin_id, config_id, at, f"entry at {at.isoformat()}", uuid.uuid4())
                )
            with connection.cursor() as cursor:
                cursor.executemany(
                    """INSERT INTO posthog_pluginlogentry
                           (id, team_id, plugin_id, plugin_config_id, timestamp, source, type, message, instance_id)
                       VALUES (%s, 2, %s, %s, %s, 'CONSOLE', 'LOG', %s, %s)""",
                    rows,
                )


def count_lines(process: subprocess.Popen[bytes], lines: list[int]) -> None:
    assert process.stdout is not None
    for chunk in iter(lambda: os.read(process.stdout.fileno(), 65536), b""):  # type: ignore[union-attr]
        lines[0] += chunk.count(b"\n")


def test_follow_exits_on_ctrl_c_under_load(
    database_url: str, redis_url: str, clean_db: Db, team: CreatedTeam
) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    ok(env, "install", str(PLUGINS / "hello-python"))
    out = ok(env, "enable", "hello-python", "--team", "2")
    config_id = int(out.split("(config ")[1].split(",")[0])
    (plugin_id,) = clean_db.execute("SELECT id FROM posthog_plugin").fetchone()  # type: ignore[misc]
    stop = threading.Event()
    writer = threading.Thread(target=write_logs, args=(database_url, config_id, plugin_id, stop))
    writer.start()
    command = [
        sys.executable,
        "-m",
        "plugin_server.cli",
        "plugins",
        "logs",
        str(config_id),
        "-f",
        "--limit",
        "20",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE)
    lines = [0]
    reader = threading.Thread(target=count_lines, args=(process, lines), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while lines[0] < LINES_BEFORE_INTERRUPT:
            assert time.monotonic() < deadline, f"only {lines[0]} lines printed"
            assert process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=5) == 0
    finally:
        stop.set()
        writer.join()
        process.kill()
        process.wait()
