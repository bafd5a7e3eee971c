"""Starting the real `plugin-server` process for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import psycopg
import redis
from celery import Celery

from plugin_server.config import parse_bool
from tests.kafka_broker import free_port

T = TypeVar("T")

PROCESS_EVENT_TASK = "posthog.tasks.process_event.process_event_with_plugins"


class RunningServer:
    def __init__(self, process: subprocess.Popen[bytes], log_path: Path, env: dict[str, str]) -> None:
        self.process = process
        self.log_path = log_path
        self.env = env

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.env['WEB_PORT']}"

    def wait_for_web(self, timeout: float = 60) -> None:
        """Wait until the web process answers /_health."""

        def answers() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                return httpx.get(f"{self.web_url}/_health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not logged within {timeout}s:\n{self.log()}")

    @property
    def web_enabled(self) -> bool:
        return not parse_bool(self.env.get("DISABLE_WEB", ""))

    def web_pid(self) -> int:
        """The web process, as its /_health tells (waiting for it to answer)."""
        self.wait_for_web()
        pid: int = httpx.get(f"{self.web_url}/_health", timeout=5).json()["pid"]
        return pid

    def worker_pids(self) -> list[int]:
        """Worker processes only (not the web process, nor the resource tracker multiprocessing starts)."""
        web = self.web_pid() if self.web_enabled else None
        output = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False
        ).stdout
        pids = []
        for pid in output.split():
            with contextlib.suppress(FileNotFoundError):
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes() and int(pid) != web:
                    pids.append(int(pid))
        return pids

    def interrupt(self) -> None:
        """Ctrl-C in a terminal: SIGINT to the whole process group (start it with process_group=True)."""
        os.killpg(self.process.pid, signal.SIGINT)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@contextlib.contextmanager
def running_server(
    tmp_path: Path, env: dict[str, str], *args: str, process_group: bool = False
) -> Iterator[RunningServer]:
    """The server running in tmp_path; with `process_group` it leads a process group of its own, as a
    command started from a terminal does (for Ctrl-C: `RunningServer.interrupt`)."""
    log_path = tmp_path / f"server-{time.monotonic_ns()}.log"
    # Each server gets its own web port, so that servers of tests running side by side do not collide.
    full_env = {**os.environ, "LOG_LEVEL": "info", "WEB_PORT": str(free_port()), **env}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "plugin_server.cli", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=tmp_path,
            process_group=0 if process_group else None,
        )
    server = RunningServer(process, log_path, full_env)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def celery_app(redis_url: str, protocol: int = 2) -> Celery:
    app = Celery(broker=redis_url)
    app.conf.task_protocol = protocol
    return app


def send_event(
    app: Celery,
    *,
    team_id: int,
    distinct_id: str,
    event: str,
    properties: dict[str, object] | None = None,
    now: str = "2021-11-28T10:00:00.000000+00:00",
    ip: str | None = "127.0.0.1",
    queue: str = "posthog-plugins",
) -> None:
    data = {"event": event, "properties": properties or {}, "timestamp": now}
    app.send_task(
        PROCESS_EVENT_TASK, args=[distinct_id, ip, "http://localhost", data, team_id, now, now], queue=queue
    )


def claimed(redis_client: redis.Redis, queue: str = "posthog-plugins") -> int:
    """Messages of `queue` the workers hold: claimed, not acknowledged yet."""
    return sum(redis_client.llen(key) for key in redis_client.keys(f"{queue}:unacked:*"))


def wait_for_count(database_url: str, sql: str, expected: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    count = -1
    with psycopg.connect(database_url, autocommit=True) as connection:
        while time.monotonic() < deadline:
            row = connection.execute(sql).fetchone()
            count = int(row[0]) if row else 0
            if count >= expected:
                return count
            time.sleep(0.1)
    return count


def wait_until(check: Callable[[], T], timeout: float = 30) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s")
