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
from tests.e2e.test_plugins_cli import PLUGINS, Db, ok, sigint_as_in_a_terminal

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


class Follower:
    """`plugins logs <config> -f` in a process of its own, its output lines counted as they come."""

    def __init__(self, env: dict[str, str], config_id: int) -> None:
        command = [sys.executable, "-m", "plugin_server.cli", "plugins", "logs", str(config_id), "-f"]
        self.process = subprocess.Popen(
            [*command, "--limit", "20"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=sigint_as_in_a_terminal,
        )
        self.lines = 0
        threading.Thread(target=self._count, daemon=True).start()

    def _count(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        for chunk in iter(lambda: os.read(stdout.fileno(), 65536), b""):
            self.lines += chunk.count(b"\n")

    def interrupt_after(self, lines: int) -> None:
        """Ctrl-C once `lines` lines are printed; it must exit at once, cleanly."""
        deadline = time.monotonic() + 60
        while self.lines < lines:
            assert time.monotonic() < deadline, f"only {self.lines} lines printed"
            assert self.process.poll() is None
            time.sleep(0.05)
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=5)
        errors = self.process.stderr.read().decode() if self.process.stderr else ""
        assert (code, errors) == (0, "")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def test_follow_exits_on_ctrl_c_under_load(
    database_url: str, redis_url: str, clean_db: Db, team: CreatedTeam
) -> None:
    """Three followers at once, interrupted at different moments (Ctrl-C may land in a query, between
    a query and its result, or in printing)."""
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    ok(env, "install", str(PLUGINS / "hello-python"))
    out = ok(env, "enable", "hello-python", "--team", "2")
    config_id = int(out.split("(config ")[1].split(",")[0])
    (plugin_id,) = clean_db.execute("SELECT id FROM posthog_plugin").fetchone()  # type: ignore[misc]
    stop = threading.Event()
    writer = threading.Thread(target=write_logs, args=(database_url, config_id, plugin_id, stop))
    writer.start()
    followers = [Follower(env, config_id) for _ in range(3)]
    try:
        for index, follower in enumerate(followers, start=1):
            follower.interrupt_after(index * LINES_BEFORE_INTERRUPT)
    finally:
        stop.set()
        writer.join()
        for follower in followers:
            follower.kill()
