"""The README's first-hour snippets, run as a newcomer pastes them, in order, against a server started
fresh on its embedded Postgres and Valkey: the blocks marked `<!-- run by tests/e2e/test_readme_snippets.py -->`.

Only what a test must change is changed: the port (3008 may be taken by another test run), the log's
`--follow` (it waits for Ctrl-C), and the example plugin's webhook (no internet here: a loopback one).
`bin/plugin-server` is a stand-in that runs this checkout's command from the test's folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

from tests.kafka_broker import free_port
from tests.loopback import LoopbackService

from .server import running_server, wait_until
from .test_readme_plugin import README, readme_example

MARKER = "<!-- run by tests/e2e/test_readme_snippets.py -->\n"


def marked_snippets() -> list[tuple[str, str]]:
    """(language, code) of each marked block, in the README's order."""
    found = re.findall(re.escape(MARKER) + r"```(\w+)\n(.*?)```", README.read_text(), re.S)
    assert len(found) == README.read_text().count(MARKER), "a marker not followed by a code block"
    return found


def run(language: str, code: str, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "sh" else [sys.executable, "-c", code]
    return subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_readme_snippets_work_as_pasted(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    folder = tmp_path / "newcomer"
    (folder / "bin").mkdir(parents=True)
    stand_in = folder / "bin" / "plugin-server"
    stand_in.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m plugin_server.cli "$@"\n')
    stand_in.chmod(0o755)
    plugin_json, index_py = readme_example()
    port = free_port()
    env = {
        **{key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")},
        "WEB_PORT": str(port),
        "WORKER_CONCURRENCY": "1",
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    snippets = marked_snippets()
    assert [language for language, _ in snippets] == ["sh", "python", "python", "sh"]
    with LoopbackService(lambda request: (200, b"{}")) as hook:
        (folder / "my-plugin").mkdir()
        (folder / "my-plugin" / "plugin.json").write_text(plugin_json)
        (folder / "my-plugin" / "index.py").write_text(
            index_py.replace("https://example.com/hook", f"{hook.url}/hook")
        )
        with running_server(folder, env) as server:
            server.wait_for_log("All systems go", timeout=120)
            server.wait_for_web()
            outputs = []
            for language, code in snippets:
                code = code.replace("3008", str(port)).replace(" --follow", "")
                result = run(language, code, folder, env)
                assert result.returncode == 0, (
                    f"{code}\n---\n{result.stdout}\n{result.stderr}\n{server.log()}"
                )
                outputs.append(result.stdout)
                if "teams token" in code:  # what `export TOKEN=...` left in the reader's shell
                    env["TOKEN"] = run("sh", "bin/plugin-server teams token", folder, env).stdout.strip()

            capture, _sdk, _celery, plugins = outputs
            printed = [json.loads(line) for line in capture.splitlines()]
            assert printed[:2] == [{"status": 1}, {"status": 1}]  # curl's two answers
            stored = [line for line in printed if "event" in line]  # then `events list`, `persons list`
            assert any(line.get("distinct_ids") == ["user-42"] for line in printed)
            assert {(event["event"], event["distinct_id"]) for event in stored} >= {
                ("$pageview", "user-42"),
                ("signed up", "user-42"),
            }
            assert "enabled plugin my-plugin for team 1 (config 1, order 0)" in plugins

            database_url = json.loads((folder / ".plugin-server" / "embedded.json").read_text())[
                "database_url"
            ]
            with psycopg.connect(database_url, autocommit=True) as connection:

                def count(sql: str) -> int:
                    row = connection.execute(sql).fetchone()
                    return int(row[0]) if row else 0

                # the SDK's event and the Celery one are stored too
                wait_until(lambda: count("SELECT count(*) FROM posthog_event WHERE event = 'signed up'") >= 2)
                wait_until(
                    lambda: count("SELECT count(*) FROM posthog_event WHERE site_url = 'https://example.com'")
                )
                # and the README's plugin, once the servers reloaded, runs on new events
                token = env["TOKEN"]

                def tagged() -> bool:
                    body = {
                        "api_key": token,
                        "event": "bought",
                        "distinct_id": "user-7",
                        "properties": {"seats": 80},
                    }
                    httpx.post(f"{server.web_url}/capture/", json=body, timeout=5)
                    time.sleep(0.5)
                    return bool(count("SELECT count(*) FROM posthog_event WHERE properties ? 'big_customer'"))

                wait_until(tagged, timeout=60)
            assert server.stop() == 0
