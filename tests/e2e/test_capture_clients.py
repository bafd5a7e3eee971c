"""The official PostHog SDKs sending to a running server: events and persons end up in Postgres.

Also the web process's life: `plugin-server healthcheck` asks /_ready, and a web process that dies
is started again by the supervisor.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from posthog import Posthog

from plugin_server.db.teams import CreatedTeam

from .server import RunningServer, running_server, wait_for_count, wait_until

NODE_SCRIPT = """
const { PostHog } = require('posthog-node')
const [host, token] = process.argv.slice(2)
const client = new PostHog(token, { host, flushAt: 20, flushInterval: 0 })
client.on('error', (error) => { console.error('posthog-node error', error); process.exitCode = 1 })
client.capture({ distinctId: 'node-anon', event: '$pageview', properties: { $current_url: 'https://x.test/' } })
client.identify({ distinctId: 'node-user', properties: { $anon_distinct_id: 'node-anon', $set: { runtime: 'node' } } })
client.capture({ distinctId: 'node-user', event: 'bought', properties: { amount: 7 } })
client.shutdown().then(() => console.log('flushed'))
"""


def _env(database_url: str, redis_url: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "WORKER_CONCURRENCY": "1"}


def _started(server: RunningServer) -> RunningServer:
    server.wait_for_log("All systems go")
    server.wait_for_web()
    return server


def _persons(database_url: str) -> dict[str, tuple[set[str], dict[str, Any]]]:
    """Each person's distinct ids and properties, by the person's smallest distinct id."""
    with psycopg.connect(database_url) as connection:
        rows = connection.execute(
            """SELECT p.id, p.properties, array_agg(d.distinct_id) FROM posthog_person p
               JOIN posthog_persondistinctid d ON d.person_id = p.id GROUP BY p.id"""
        ).fetchall()
    return {min(ids): (set(ids), properties) for _, properties, ids in rows}


def _events(database_url: str) -> list[tuple[str, str, dict[str, Any]]]:
    with psycopg.connect(database_url) as connection:
        return connection.execute(
            "SELECT event, distinct_id, properties FROM posthog_event ORDER BY id"
        ).fetchall()


def test_posthog_python_sdk_events_are_stored_with_their_persons(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam
) -> None:
    errors: list[Any] = []
    with running_server(tmp_path, _env(database_url, redis_url)) as server:
        _started(server)
        client = Posthog(
            team.api_token, host=server.web_url, gzip=True, on_error=lambda *error: errors.append(error)
        )
        client.capture("$pageview", distinct_id="anon-1", properties={"$current_url": "https://x.test/"})
        client.capture(
            "$identify",
            distinct_id="user-1",
            properties={"$anon_distinct_id": "anon-1", "$set": {"email": "a@x.test"}},
        )
        client.capture("bought", distinct_id="user-1", properties={"amount": 5})
        client.capture("$pageview", distinct_id="someone-else")
        client.flush()
        client.shutdown()
        assert errors == []
        assert wait_for_count(database_url, "SELECT COUNT(*) FROM posthog_event", 4) == 4
    events = _events(database_url)
    assert [(name, distinct_id) for name, distinct_id, _ in events] == [
        ("$pageview", "anon-1"),
        ("$identify", "user-1"),
        ("bought", "user-1"),
        ("$pageview", "someone-else"),
    ]
    assert events[2][2]["amount"] == 5
    assert events[2][2]["$lib"] == "posthog-python"
    assert events[2][2]["$ip"] == "127.0.0.1"
    persons = _persons(database_url)
    distinct_ids, properties = persons["anon-1"]
    assert distinct_ids == {"anon-1", "user-1"}
    assert properties["email"] == "a@x.test"
    assert persons["someone-else"][0] == {"someone-else"}


@pytest.mark.skipif(shutil.which("npm") is None, reason="posthog-node needs node and npm")
def test_posthog_node_sdk_events_are_stored_with_their_persons(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam
) -> None:
    node_folder = tmp_path / "node"
    node_folder.mkdir()
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "posthog-node@5"],
        cwd=node_folder,
        check=True,
        capture_output=True,
        timeout=240,
    )
    (node_folder / "send.js").write_text(NODE_SCRIPT)
    with running_server(tmp_path, _env(database_url, redis_url)) as server:
        _started(server)
        sent = subprocess.run(
            ["node", "send.js", server.web_url, team.api_token],
            cwd=node_folder,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        assert "flushed" in sent.stdout
        assert wait_for_count(database_url, "SELECT COUNT(*) FROM posthog_event", 3) == 3
    events = _events(database_url)
    assert [(name, distinct_id) for name, distinct_id, _ in events] == [
        ("$pageview", "node-anon"),
        ("$identify", "node-user"),
        ("bought", "node-user"),
    ]
    assert events[2][2]["$lib"] == "posthog-node"
    distinct_ids, properties = _persons(database_url)["node-anon"]
    assert distinct_ids == {"node-anon", "node-user"}
    assert properties["runtime"] == "node"


def test_healthcheck_asks_ready_and_a_dead_web_process_is_restarted(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam
) -> None:
    with running_server(tmp_path, _env(database_url, redis_url)) as server:
        _started(server)
        command = [sys.executable, "-m", "plugin_server.cli", "healthcheck"]
        env = {**server.env, "LOG_LEVEL": "error"}
        # Ready once the worker reported that it is consuming.
        wait_until(lambda: subprocess.run(command, env=env, capture_output=True, check=False).returncode == 0)
        ready = httpx.get(f"{server.web_url}/_ready", timeout=10).json()
        assert ready["checks"]["workers"] == {"ok": True, "expected": 1, "alive": 1, "consuming": 1}

        os.kill(server.web_pid(), signal.SIGKILL)
        failed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        assert failed.returncode == 1
        assert "cannot reach" in failed.stderr
        server.wait_for_log("web process exited")
        server.wait_for_web()
        response = httpx.post(
            f"{server.web_url}/capture",
            json={"event": "after restart", "distinct_id": "u", "api_key": team.api_token},
        )
        assert response.json() == {"status": 1}
        assert wait_for_count(database_url, "SELECT COUNT(*) FROM posthog_event", 1) == 1

    worker_lines = [line for line in server.log().splitlines() if "worker" in line and "exited" in line]
    assert worker_lines == []
    assert ready["status"] == "ready"


def _answering_pids(server: RunningServer, count: int) -> set[int]:
    """Ask /_health on new connections (which the kernel spreads) until `count` processes answered."""
    seen: set[int] = set()

    def all_seen() -> bool:
        seen.update(httpx.get(f"{server.web_url}/_health", timeout=5).json()["pid"] for _ in range(20))
        return len(seen) == count

    wait_until(all_seen)
    return seen


def test_several_web_processes_share_the_port_and_one_that_dies_is_replaced(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam
) -> None:
    env = {**_env(database_url, redis_url), "WEB_CONCURRENCY": "2"}
    with running_server(tmp_path, env) as server:
        _started(server)
        dead, survivor = sorted(_answering_pids(server, 2))
        os.kill(dead, signal.SIGKILL)
        for number in range(10):  # the other process answers meanwhile
            response = httpx.post(
                f"{server.web_url}/capture",
                json={"event": f"while one is down {number}", "distinct_id": "u", "api_key": team.api_token},
                timeout=5,
            )
            assert response.json() == {"status": 1}
        server.wait_for_log("web process exited (web-")
        later = _answering_pids(server, 2)
        assert survivor in later and dead not in later
        assert wait_for_count(database_url, "SELECT COUNT(*) FROM posthog_event", 10) == 10


def test_web_processes_under_load_store_every_event_they_acknowledged_when_one_is_killed(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam
) -> None:
    """Concurrent capture requests on new connections, spread over two web processes; one is killed
    with requests in flight. Every event answered `{"status": 1}` is stored, the survivor keeps
    answering, and nothing is stored twice."""
    env = {**_env(database_url, redis_url), "WEB_CONCURRENCY": "2"}
    with running_server(tmp_path, env) as server:
        _started(server)
        victim = min(_answering_pids(server, 2))

        def send(number: int) -> str | None:
            """The event's uuid if the server acknowledged it."""
            event_uuid = str(uuid.uuid4())
            body = {
                "event": "load",
                "distinct_id": f"u{number % 10}",
                "uuid": event_uuid,
                "api_key": team.api_token,
            }
            try:
                response = httpx.post(f"{server.web_url}/e/", json=body, timeout=10)
            except httpx.HTTPError:  # its connection went with the killed process
                return None
            return event_uuid if response.status_code == 200 and response.json() == {"status": 1} else None

        with ThreadPoolExecutor(8) as pool:
            sending = [pool.submit(send, number) for number in range(400)]
            acknowledged = []
            for done, future in enumerate(as_completed(sending)):
                if done == 150:
                    os.kill(victim, signal.SIGKILL)
                if (event_uuid := future.result()) is not None:
                    acknowledged.append(event_uuid)
        server.wait_for_log("web process exited (web-")
        assert len(acknowledged) >= 350, len(acknowledged)
        wait_for_count(database_url, "SELECT COUNT(*) FROM posthog_event", len(acknowledged))
        with psycopg.connect(database_url) as connection:
            stored = [row[0] for row in connection.execute("SELECT uuid::text FROM posthog_event").fetchall()]
    assert set(acknowledged) <= set(stored)
    assert len(stored) == len(set(stored)) <= 400
