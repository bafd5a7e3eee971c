"""The example plugin of the README, taken from the README itself, installed with the CLI and run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from plugin_server.db.teams import CreatedTeam
from tests.loopback import LoopbackService, Request

from .server import celery_app, running_server, send_event, wait_for_count, wait_until

README = Path(__file__).parents[2] / "README.md"


def readme_example() -> tuple[str, str]:
    """(plugin.json, index.py) of the README's "Write a Python plugin" section."""
    section = README.read_text().split("### Write a Python plugin", 1)[1]
    plugin_json = re.search(r"```json\n(.*?)```", section, re.S)
    index_py = re.search(r"```python\n(.*?)```", section, re.S)
    assert plugin_json and index_py
    return plugin_json[1], index_py[1]


@pytest.fixture
def hook() -> Iterator[tuple[str, list[Any]]]:
    """A loopback stand-in for the webhook the example exports to: (its URL, the batches it got)."""
    received: list[Any] = []

    def answer(request: Request) -> tuple[int, bytes]:
        received.append(json.loads(request.body))
        return 200, b"{}"

    with LoopbackService(answer) as service:
        yield f"{service.url}/hook", received


def test_the_readme_plugin_installs_and_runs(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    team: CreatedTeam,
    clean_db: psycopg.Connection[Any],
    hook: tuple[str, list[Any]],
) -> None:
    hook_url, received = hook
    plugin_json, index_py = readme_example()
    folder = tmp_path / "my-plugin"
    folder.mkdir()
    (folder / "plugin.json").write_text(plugin_json)
    (folder / "index.py").write_text(index_py.replace("https://example.com/hook", hook_url))
    environment = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    for command in (
        ["install", str(folder)],
        [
            "enable",
            "my-plugin",
            "--team",
            str(team.team_id),
            "--config",
            '{"threshold": "50", "exportEventsBufferSeconds": "1"}',
        ],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "plugin_server.cli", "plugins", *command],
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    app = celery_app(redis_url)
    server_env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "WORKER_CONCURRENCY": "1"}
    with running_server(tmp_path, server_env) as server:
        server.wait_for_log("All systems go")
        send_event(app, team_id=team.team_id, distinct_id="a", event="pageview", properties={"seats": 60})
        send_event(app, team_id=team.team_id, distinct_id="a", event="internal test")
        send_event(app, team_id=team.team_id, distinct_id="b", event="signed up", properties={"seats": 3})
        assert (
            wait_for_count(database_url, "SELECT COUNT(*) FROM plugin_server_jobs WHERE type = 'welcome'", 1)
            == 1
        )
        assert wait_for_count(database_url, "SELECT COUNT(*) FROM posthog_event", 2) == 2
        wait_until(lambda: received)
    stored = {row[0]: row[1] for row in clean_db.execute("SELECT event, properties FROM posthog_event")}
    assert stored["pageview"]["big_customer"] is True and stored["signed up"]["big_customer"] is False
    assert stored["signed up"]["seen_by_plugin"] == 2
    assert "internal test" not in stored
    assert sorted(event["event"] for batch in received for event in batch) == ["pageview", "signed up"]
