"""What every `plugin-server` subcommand needs: settings, and the database and Redis to talk to."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer

from plugin_server.config import Settings, SettingsError, load_settings
from plugin_server.logs import setup_logging
from plugin_server.services.embedded import read_embedded_urls, start_embedded


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
    return settings.redis_url or read_embedded_urls(settings.PLUGIN_SERVER_DATA_DIR)[1]


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """The configured database, the running embedded one, or an embedded one started for this command."""
    url = settings.database_url or read_embedded_urls(settings.PLUGIN_SERVER_DATA_DIR)[0]
    if url is not None:
        yield url
        return
    services = start_embedded(settings.PLUGIN_SERVER_DATA_DIR, postgres=True, redis=False)
    try:
        assert services.database_url
        yield services.database_url
    finally:
        services.stop()
