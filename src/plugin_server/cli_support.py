"""What every `plugin-server` subcommand needs: settings, and the database and Redis to talk to."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

from plugin_server.config import Settings, SettingsError, load_settings
from plugin_server.logs import setup_logging
from plugin_server.services.embedded import last_data_dir, read_embedded_urls, start_embedded

if TYPE_CHECKING:
    from plugin_server.reads import Reads

T = TypeVar("T")


def load_settings_or_exit() -> Settings:
    """The settings, or exit 2 with the message naming each bad variable."""
    try:
        settings = load_settings()
    except SettingsError as error:
        typer.echo(f"plugin-server: {error}", err=True)
        raise typer.Exit(2) from None
    setup_logging(settings.LOG_LEVEL, "main", settings.LOG_FORMAT)
    return settings


def redis_url(settings: Settings) -> str | None:
    """The configured Redis, or the embedded one a running server published; None if neither."""
    return settings.redis_url or read_embedded_urls(data_dir(settings))[1]


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """The configured database, the running embedded one, or the stopped embedded one started for this
    command. Without any, exit 1 saying how to get one, rather than start an empty database."""
    url = settings.database_url or read_embedded_urls(folder := data_dir(settings))[0]
    if url is not None:
        yield url
        return
    if not (folder / "postgres").is_dir():
        typer.echo(
            f"plugin-server: no database: no server has run with the data folder {folder}. Start one with "
            "`plugin-server start` (it creates the database and a team), run this command from the folder "
            "you started it in, or set PLUGIN_SERVER_DATA_DIR or DATABASE_URL.",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"plugin-server: starting the embedded Postgres of {folder} for this command", err=True)
    services = start_embedded(folder, postgres=True, redis=False)
    try:
        assert services.database_url
        yield services.database_url
    finally:
        services.stop()


def read_stored(settings: Settings, url: str, read: Callable[[Reads], Awaitable[T]]) -> T:
    """What `read` reads through the readers of EVENT_STORE (topology.open_reads), with the database at
    `url`; exit 1 saying why when the store cannot be read."""
    from plugin_server.reads import ReadFailed
    from plugin_server.topology import open_reads

    async def run() -> T:
        async with open_reads(settings, url) as reads:
            return await read(reads)

    try:
        return asyncio.run(run())
    except ReadFailed as error:
        typer.echo(f"plugin-server: cannot read the event store: {error}", err=True)
        raise typer.Exit(1) from None


def data_dir(settings: Settings) -> Path:
    """The embedded servers' data folder for a command: PLUGIN_SERVER_DATA_DIR when it was set or exists
    here; else the one the last `plugin-server start` used (said on stderr), so that commands work from
    any folder."""
    configured = settings.PLUGIN_SERVER_DATA_DIR.resolve()
    if configured.exists() or "PLUGIN_SERVER_DATA_DIR" in settings.model_fields_set:
        return configured
    last = last_data_dir()
    if last is None or not last.is_dir():
        return configured
    typer.echo(
        f"plugin-server: using the data of the last server started, {last} "
        f"(there is no {configured}; set PLUGIN_SERVER_DATA_DIR to choose)",
        err=True,
    )
    return last
