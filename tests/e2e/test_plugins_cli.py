"""`plugin-server plugins ...` run as a user would, against the test database and Redis."""

from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from redis.client import PubSub

from plugin_server.db.teams import CreatedTeam, create_organization_and_team

Db = psycopg.Connection[Any]
PLUGINS = Path(__file__).parent.parent / "assets" / "plugins"


def sigint_as_in_a_terminal() -> None:
    """Popen's preexec_fn for a command the test stops with Ctrl-C: SIGINT's default action, as a
    terminal's foreground command has it, whatever this test run inherited (a shell starts a
    background job with SIGINT ignored, and an ignored signal stays ignored in the programs it runs)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def env(database_url: str, redis_url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "plugin_server.cli", "plugins", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=120)


def ok(env: dict[str, str], *args: str) -> str:
    result = cli(env, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def reloads(redis_client: redis.Redis) -> Iterator[PubSub]:
    """Subscribed to the reload channel before any command runs."""
    pubsub = redis_client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe("reload-plugins")
    confirmation = pubsub.get_message(timeout=5)
    assert confirmation and confirmation["type"] == "subscribe"
    yield pubsub
    pubsub.close()


def reload_published(pubsub: PubSub) -> bool:
    message = pubsub.get_message(timeout=5)
    return message is not None and message["type"] == "message"


def test_install_list_enable_and_disable_a_folder_plugin(
    env: dict[str, str], clean_db: Db, team: CreatedTeam, reloads: PubSub, tmp_path: Path
) -> None:
    out = ok(env, "install", str(PLUGINS / "hello-python"))
    plugin_id = int(out.split("(id ")[1].rstrip(")\n"))
    assert out == f"installed plugin hello-python (id {plugin_id})\n"
    assert reload_published(reloads)
    name, org, plugin_type, url, archive, schema, updated = clean_db.execute(
        "SELECT name, organization_id, plugin_type, url, archive, config_schema, updated_at "
        "FROM posthog_plugin WHERE id = %s",
        (plugin_id,),
    ).fetchone()  # type: ignore[misc]
    assert (name, str(org), plugin_type, url) == ("hello-python", team.organization_id, "custom", None)
    with zipfile.ZipFile(io.BytesIO(archive)) as stored:
        assert sorted(stored.namelist()) == ["index.py", "plugin.json"]
        assert stored.read("index.py") == (PLUGINS / "hello-python" / "index.py").read_bytes()
    assert [item["key"] for item in schema] == ["greeting", "words"]

    # installing the same name again updates the plugin
    assert ok(env, "install", str(PLUGINS / "hello-python")) == out
    assert reload_published(reloads)
    (count, updated_again) = clean_db.execute(
        "SELECT COUNT(*), MAX(updated_at) FROM posthog_plugin"
    ).fetchone()  # type: ignore[misc]
    assert count == 1 and updated_again > updated

    words = tmp_path / "words.txt"
    words.write_text("hello\nhi\n")
    out = ok(
        env,
        "enable",
        "hello-python",
        "--team",
        "2",
        "--config",
        '{"greeting": "hi"}',
        "--attachment",
        f"words={words}",
    )
    config_id = int(out.split("(config ")[1].split(",")[0])
    assert out == f"enabled plugin hello-python for team 2 (config {config_id}, order 0)\n"
    assert reload_published(reloads)
    assert clean_db.execute(
        'SELECT team_id, plugin_id, enabled, "order", config FROM posthog_pluginconfig'
    ).fetchall() == [(2, plugin_id, True, 0, {"greeting": "hi"})]
    assert clean_db.execute(
        "SELECT plugin_config_id, team_id, key, content_type, file_name, file_size, contents FROM posthog_pluginattachment"
    ).fetchall() == [(config_id, 2, "words", "text/plain", "words.txt", 9, b"hello\nhi\n")]

    listed = ok(env, "list")
    assert listed.startswith(f"{plugin_id}  hello-python  [archive (")
    assert f"organization {team.organization_id}]" in listed
    assert f"    team 2: config {config_id}, enabled, order 0\n" in listed

    assert ok(env, "disable", str(plugin_id), "--team", "2") == "disabled plugin hello-python for team 2\n"
    assert reload_published(reloads)
    assert f"    team 2: config {config_id}, disabled, order 0\n" in ok(env, "list")

    # enabling again keeps the settings and merges new ones; the attachment stays
    ok(env, "enable", str(plugin_id), "--team", "2", "--config", '{"other": "x"}')
    assert reload_published(reloads)
    assert clean_db.execute("SELECT enabled, config FROM posthog_pluginconfig").fetchall() == [
        (True, {"greeting": "hi", "other": "x"})
    ]
    assert clean_db.execute("SELECT COUNT(*) FROM posthog_pluginattachment").fetchone() == (1,)


def test_install_a_local_folder_and_an_archive_in_a_chosen_organization(
    env: dict[str, str], clean_db: Db, team: CreatedTeam, reloads: PubSub, tmp_path: Path
) -> None:
    other = create_organization_and_team(clean_db, organization_name="Other")
    failed = cli(env, "install", str(PLUGINS / "hello-js"))
    assert failed.returncode == 1
    assert "several organizations: give the organization id" in failed.stderr

    ok(env, "install", str(PLUGINS / "hello-js"), "--local", "--organization", other.organization_id)
    assert reload_published(reloads)
    assert clean_db.execute(
        "SELECT name, organization_id::text, plugin_type, url, archive FROM posthog_plugin"
    ).fetchall() == [
        ("hello-js", other.organization_id, "local", f"file:{(PLUGINS / 'hello-js').resolve()}", None)
    ]

    archive = tmp_path / "hello-python-1.0.zip"
    with zipfile.ZipFile(archive, "w") as packed:
        for file in ("plugin.json", "index.py"):
            packed.write(PLUGINS / "hello-python" / file, f"hello-python-main/{file}")
    ok(env, "install", str(archive), "--organization", team.organization_id)
    assert clean_db.execute("SELECT archive FROM posthog_plugin WHERE name = 'hello-python'").fetchone() == (
        archive.read_bytes(),
    )

    # a plugin of another organization cannot be enabled for team 2
    failed = cli(env, "enable", "hello-js", "--team", "2")
    assert (failed.returncode, failed.stderr.strip()) == (
        1,
        "plugin-server: no plugin 'hello-js' available to team 2",
    )


def test_bad_input_is_refused_with_a_message(
    env: dict[str, str], clean_db: Db, team: CreatedTeam, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "plugin.json").write_text("{ nope")
    failed = cli(env, "install", str(broken))
    assert failed.returncode == 1
    assert "is not a loadable plugin: Can not load plugin.json for plugin broken" in failed.stderr

    missing = cli(env, "install", str(tmp_path / "missing"))
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        f"plugin-server: {tmp_path / 'missing'} does not exist",
    )

    ok(env, "install", str(PLUGINS / "hello-python"))
    assert cli(env, "enable", "hello-python", "--team", "2", "--config", "[1]").returncode == 2
    assert cli(env, "enable", "hello-python", "--team", "2", "--attachment", "no-equals").returncode == 2
    no_team = cli(env, "enable", "hello-python", "--team", "99")
    assert (no_team.returncode, no_team.stderr.strip()) == (1, "plugin-server: no team 99")
    not_configured = cli(env, "disable", "hello-python", "--team", "2")
    assert not_configured.returncode == 1
    assert "is not configured for team 2" in not_configured.stderr
    assert clean_db.execute("SELECT COUNT(*) FROM posthog_pluginconfig").fetchone() == (0,)


def insert_log(db: Db, config_id: int, plugin_id: int, message: str, at: datetime) -> None:
    db.execute(
        """INSERT INTO posthog_pluginlogentry
               (id, team_id, plugin_id, plugin_config_id, timestamp, source, type, message, instance_id)
           VALUES (%s, 2, %s, %s, %s, 'CONSOLE', 'LOG', %s, %s)""",
        (uuid.uuid4(), plugin_id, config_id, at, message, uuid.uuid4()),
    )


def read_line(process: subprocess.Popen[bytes], pending: bytearray, timeout: float = 10) -> str:
    """The next line of the process's output, without blocking past `timeout`."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while b"\n" not in pending:
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no output within {timeout} s"
        chunk = os.read(process.stdout.fileno(), 4096)
        assert chunk, "the process closed its output"
        pending += chunk
    line, _, rest = bytes(pending).partition(b"\n")
    pending[:] = rest
    return line.decode()


def test_logs_prints_the_newest_entries_and_follows_new_ones(
    env: dict[str, str], clean_db: Db, team: CreatedTeam
) -> None:
    ok(env, "install", str(PLUGINS / "hello-python"))
    out = ok(env, "enable", "hello-python", "--team", "2")
    config_id = int(out.split("(config ")[1].split(",")[0])
    (plugin_id,) = clean_db.execute("SELECT id FROM posthog_plugin").fetchone()  # type: ignore[misc]
    start = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    for index in range(3):
        insert_log(clean_db, config_id, plugin_id, f"message {index}", start + timedelta(seconds=index))

    lines = ok(env, "logs", str(config_id), "--limit", "2").splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["CONSOLE LOG message 1", "CONSOLE LOG message 2"]
    assert datetime.fromisoformat(lines[0].split(" ")[0]) == start + timedelta(seconds=1)
    assert ok(env, "logs", "999999") == ""

    process = subprocess.Popen(
        [sys.executable, "-m", "plugin_server.cli", "plugins", "logs", str(config_id), "--follow"],
        env=env,
        stdout=subprocess.PIPE,
        preexec_fn=sigint_as_in_a_terminal,
    )
    try:
        pending = bytearray()
        assert [read_line(process, pending).endswith(f"message {index}") for index in range(3)] == [True] * 3
        insert_log(clean_db, config_id, plugin_id, "message 3", start + timedelta(seconds=3))
        assert read_line(process, pending).endswith("CONSOLE LOG message 3")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()
