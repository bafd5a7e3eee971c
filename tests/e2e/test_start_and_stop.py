"""Starting and stopping as a newcomer does: a busy WEB_PORT, and Ctrl-C in a terminal."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from .server import running_server

NO_SERVICES = {"DATABASE_URL": "", "REDIS_URL": "", "WORKER_CONCURRENCY": "1"}


def test_a_busy_web_port_stops_the_start_with_a_clear_message(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "WEB_PORT": str(port)}
        with running_server(tmp_path, {**env, "WEB_HOSTNAME": "127.0.0.1"}) as server:
            assert server.process.wait(60) == 1
    log = server.log()
    assert f"cannot listen on 127.0.0.1:{port} (WEB_PORT): Address already in use" in log
    assert "set WEB_PORT to a free port" in log
    assert "Traceback" not in log and "starting the web server" not in log


def test_ctrl_c_stops_the_embedded_server_cleanly(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    env = {**NO_SERVICES, "PLUGIN_SERVER_DATA_DIR": str(tmp_path / "data")}
    with running_server(tmp_path, env, process_group=True) as server:
        server.wait_for_log("All systems go", timeout=120)
        server.wait_for_web()
        server.interrupt()  # the terminal sends it to every process of the group, Valkey's too
        assert server.process.wait(60) == 0
    log = server.log()
    assert "received SIGINT: draining workers and stopping" in log
    assert (
        f"the operator's console is at http://localhost:{server.env['WEB_PORT']}/console (set ADMIN_TOKEN"
        in log
    )
    assert "Traceback" not in log, log
    assert "crashed" not in log and "Connection refused" not in log, log


def test_commands_find_the_embedded_server_from_any_folder(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    state = {"XDG_STATE_HOME": str(tmp_path / "state")}
    started_in, elsewhere, fresh = (tmp_path / name for name in ("project", "elsewhere", "fresh"))
    for folder in (started_in, elsewhere, fresh):
        folder.mkdir()
    env = {**NO_SERVICES, **state}
    with running_server(started_in, env) as server:
        server.wait_for_log("All systems go", timeout=120)
        listed = run_cli(elsewhere, "teams", "list", **state)
        assert listed.returncode == 0, listed.stderr
        assert "Default Project" in listed.stdout
        assert f"using the data of the last server started, {started_in / '.plugin-server'}" in listed.stderr
        assert server.stop() == 0

    # stopped: the command starts that embedded Postgres for itself, and says so
    listed = run_cli(elsewhere, "teams", "list", **state)
    assert listed.returncode == 0, listed.stderr
    assert "Default Project" in listed.stdout
    assert "starting the embedded Postgres of" in listed.stderr

    # nothing ever started for this user: no empty database made up, a clear way out instead
    nothing = run_cli(fresh, "teams", "list", XDG_STATE_HOME=str(tmp_path / "other-state"))
    assert nothing.returncode == 1
    assert "no database: no server has run with the data folder" in nothing.stderr
    assert "`plugin-server start`" in nothing.stderr
    assert not (fresh / ".plugin-server").exists()


def run_cli(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    return subprocess.run(
        [sys.executable, "-m", "plugin_server.cli", *args],
        env={**environ, **env},
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
