"""The ClickHouse client, built from the CLICKHOUSE_* settings.

CLICKHOUSE_HOST is a host name, with an optional `:port` (HTTP interface; by default port 8123, or
8443 with CLICKHOUSE_SECURE, as the original connected), or a `chdb:///folder` address: the in-process chDB engine storing in that folder
(the `chdb` extra; one process at a time may open a folder, so run one worker with it).

clickhouse-connect's client is synchronous (its async client does not speak to chDB), so calls run in
a thread (its chDB backend serialises them itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from plugin_server.config import Settings

CHDB_SCHEME = "chdb:"


def is_in_process(settings: Settings) -> bool:
    """Whether CLICKHOUSE_HOST names an in-process chDB folder rather than a server."""
    return settings.CLICKHOUSE_HOST.startswith(CHDB_SCHEME)


def client_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of `clickhouse_connect.get_client` for these settings."""
    if is_in_process(settings):
        return {"dsn": settings.CLICKHOUSE_HOST, "database": settings.CLICKHOUSE_DATABASE}
    address = urlsplit(f"//{settings.CLICKHOUSE_HOST}")
    options: dict[str, Any] = {
        "host": address.hostname or "localhost",
        "database": settings.CLICKHOUSE_DATABASE,
        "username": settings.CLICKHOUSE_USER,
        "password": settings.CLICKHOUSE_PASSWORD or "",
        "interface": "https" if settings.CLICKHOUSE_SECURE else "http",
        # No session: one client serves several concurrent batches (ClickHouse refuses concurrent
        # queries in one session).
        "autogenerate_session_id": False,
        # Every worker inserts a small batch many times a second: the server buffers them into larger
        # parts (too many small parts slow a MergeTree down), and answers once they are written.
        "settings": {"async_insert": 1, "wait_for_async_insert": 1},
    }
    if address.port:
        options["port"] = address.port
    if settings.CLICKHOUSE_SECURE:
        options["verify"] = True
        if settings.CLICKHOUSE_CA:
            options["ca_cert"] = settings.CLICKHOUSE_CA  # a PEM file of the CA certificates to trust
    return options


def open_client(settings: Settings, *, database: str | None = None) -> Client:
    """A connected client (it asks the server for its version at once, so a bad address fails here).
    `database` overrides CLICKHOUSE_DATABASE (e.g. "default", to create the configured one)."""
    options = client_options(settings)
    if database is not None:
        options["database"] = database
    return clickhouse_connect.get_client(**options)


class AsyncClickHouse:
    """The few calls the server makes, awaitable (each runs in a thread)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def raw_insert(
        self,
        table: str,
        column_names: Sequence[str] | None,
        data: bytes,
        fmt: str,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """Insert `data` already in the ClickHouse format `fmt` (JSONEachRow, Protobuf...)."""
        await asyncio.to_thread(
            self.client.raw_insert, table, column_names, insert_block=data, fmt=fmt, settings=settings
        )

    async def rows(self, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        """The rows of a query, as dicts by column name."""
        result = await asyncio.to_thread(self.client.query, sql, parameters=parameters)
        names = result.column_names
        return [dict(zip(names, row, strict=True)) for row in result.result_rows]

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)
