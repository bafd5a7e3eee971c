"""Starting and stopping as a newcomer does: a busy WEB_PORT, and Ctrl-C in a terminal."""

from __future__ import annotations

import os
import socket
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
    assert "Traceback" not in log, log
    assert "crashed" not in log and "Connection refused" not in log, log
