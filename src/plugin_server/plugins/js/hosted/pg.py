"""`require('pg')` for JS plugins: the host side of node-postgres' Client over psycopg (pg.js is the
JS side, which keeps node-postgres' API, turns parameters into text and parses result values by
type as node-postgres does).

A plugin's connection goes where its options say, through the ConnectGuard (the guard's address is
the one connected to). libpq would otherwise fill what the plugin left out from the server's own
environment and files (PGPASSWORD, ~/.pgpass, a service file, client certificates, Kerberos), and
send it to a server the plugin chose; so every such parameter is given explicitly, unix sockets are
refused, and only the parameters below are read from the plugin's options.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg
from psycopg.conninfo import make_conninfo

from plugin_server.plugins.js.hosted import HostedError, Operation
from plugin_server.plugins.meta.network import ConnectGuard, ConnectRefused

# Open connections one isolate may hold at once.
MAX_CONNECTIONS = 20
# The largest result (bytes of text) a query may hand to the plugin.
MAX_RESULT_BYTES = 32 * 1024 * 1024
# What libpq is told when the plugin gave no password: a server that asks for one refuses it, as it
# refuses node-postgres without a password (an empty value would make libpq read PGPASSWORD).
NO_PASSWORD = "-"
_SSL_MODES = {
    "disable": "disable",
    "prefer": "verify-full",
    "require": "verify-full",
    "verify-ca": "verify-full",
    "verify-full": "verify-full",
    "no-verify": "require",
}


def _ssl_mode(ssl: Any) -> str:
    """node-postgres' `ssl` option as libpq's sslmode: false -> no TLS; true or an object -> TLS with
    the certificate verified against the system's CAs, unless `rejectUnauthorized: false`."""
    if ssl is None or ssl is False:
        return "disable"
    if isinstance(ssl, dict) and ssl.get("rejectUnauthorized") is False:
        return "require"
    return "verify-full"


def _from_connection_string(text: str) -> dict[str, Any]:
    """The options in a postgres:// URL (as pg-connection-string reads them), which override the others."""
    url = urlsplit(text)
    if url.scheme not in ("postgres", "postgresql"):
        raise HostedError("TypeError", "pg: connectionString must be a postgres:// URL")
    query = {key: values[-1] for key, values in parse_qs(url.query).items()}
    options: dict[str, Any] = {}
    if url.hostname:
        options["host"] = unquote(url.hostname)
    if url.port:
        options["port"] = url.port
    if url.username:
        options["user"] = unquote(url.username)
    if url.password is not None:
        options["password"] = unquote(url.password)
    if url.path.strip("/"):
        options["database"] = unquote(url.path.lstrip("/"))
    if "sslmode" in query:
        options["sslmode"] = _SSL_MODES.get(query["sslmode"], "verify-full")
    elif "ssl" in query:
        options["sslmode"] = "disable" if query["ssl"] in ("0", "false") else "verify-full"
    if "application_name" in query:
        options["application_name"] = query["application_name"]
    return options


def conninfo(options: dict[str, Any], address: str) -> str:
    """libpq's connection string for the plugin's `options` (already read: host, port...), connecting
    to `address`; nothing is left for libpq to take from the environment or files."""
    host = str(options["host"])
    user = str(options.get("user") or "postgres")
    sslmode = str(options.get("sslmode") or _ssl_mode(options.get("ssl")))
    # Verified against the system's CAs, as node does, not against a root.crt of the server's user.
    verify = {"sslrootcert": "system"} if sslmode == "verify-full" else {}
    return make_conninfo(
        **verify,
        host=host,
        hostaddr=address,
        port=str(options["port"]),
        user=user,
        password=str(options.get("password") or NO_PASSWORD),
        dbname=str(options.get("database") or user),
        sslmode=sslmode,
        sslcertmode="disable",
        gssencmode="disable",
        connect_timeout=str(max(2, int(options["connect_timeout"]))),
        application_name=str(options.get("application_name") or "posthog-plugin"),
    )


def _database_error(error: psycopg.Error) -> HostedError:
    """node-postgres' DatabaseError (pg-protocol names it "error") for a server error; a plain Error
    for a connection that failed before the server answered."""
    diag = error.diag
    if error.sqlstate is None:
        return HostedError("Error", str(error).strip())
    fields = {
        "code": error.sqlstate,
        "severity": diag.severity,
        "detail": diag.message_detail,
        "hint": diag.message_hint,
        "position": diag.statement_position,
        "schema": diag.schema_name,
        "table": diag.table_name,
        "column": diag.column_name,
        "constraint": diag.constraint_name,
    }
    message = diag.message_primary or str(error).strip()
    return HostedError("error", message, **{key: value for key, value in fields.items() if value is not None})


def _result(cursor: psycopg.AsyncRawCursor[Any]) -> dict[str, Any]:
    """One statement's result with every value as the server's text (None for NULL), bytea as hex."""
    result = cursor.pgresult
    status = (cursor.statusmessage or "").split()
    fields: list[dict[str, Any]] = []
    rows: list[list[str | None]] = []
    if result is not None and result.nfields:
        fields = [
            {"name": (result.fname(i) or b"").decode(), "dataTypeID": result.ftype(i)}
            for i in range(result.nfields)
        ]
        size = 0
        for row in range(result.ntuples):
            values = [result.get_value(row, column) for column in range(result.nfields)]
            size += sum(len(value) for value in values if value is not None)
            if size > MAX_RESULT_BYTES:
                raise HostedError(
                    "RangeError", f"pg: the query result is larger than {MAX_RESULT_BYTES} bytes"
                )
            rows.append([None if value is None else value.decode("utf-8", "replace") for value in values])
    return {
        "command": status[0] if status else None,
        "rowCount": cursor.rowcount if cursor.rowcount >= 0 else None,
        "oid": int(status[1]) if len(status) == 3 and status[0] == "INSERT" else None,
        "fields": fields,
        "rows": rows,
    }


def _parameter(value: Any) -> str | bytes | None:
    """A parameter as pg.js sends it: null, ["t", text] or ["b", base64 bytes]."""
    if value is None:
        return None
    kind, data = value
    return base64.b64decode(data) if kind == "b" else str(data)


class PgConnections:
    """The connections of one isolate, by the handle the plugin's Client holds."""

    def __init__(self, guard: ConnectGuard, timeout: float) -> None:
        self._guard = guard
        self._timeout = timeout
        self._connections: dict[int, psycopg.AsyncConnection[Any]] = {}
        self._handles = itertools.count(1)

    def operations(self) -> dict[str, Operation]:
        return {"pg.connect": self.connect, "pg.query": self.query, "pg.end": self.end}

    async def connect(self, given: dict[str, Any]) -> int:
        if len(self._connections) >= MAX_CONNECTIONS:
            raise HostedError("Error", f"pg: a plugin may hold at most {MAX_CONNECTIONS} connections at once")
        options = self._options(given)
        try:
            [address, *_] = await self._guard(str(options["host"]), int(options["port"]))
        except ConnectRefused as error:
            raise HostedError("Error", str(error)) from None
        try:
            connection = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(conninfo(options, address), autocommit=True),
                self._timeout,
            )
        except TimeoutError:
            raise HostedError("Error", "Connection terminated due to connection timeout") from None
        except psycopg.Error as error:
            raise _database_error(error) from None
        handle = next(self._handles)
        self._connections[handle] = connection
        return handle

    def _options(self, given: dict[str, Any]) -> dict[str, Any]:
        options = {
            key: given[key]
            for key in ("host", "port", "user", "password", "database", "ssl", "application_name")
            if given.get(key) is not None
        }
        if given.get("connectionString"):
            options.update(_from_connection_string(str(given["connectionString"])))
        options.setdefault("host", "localhost")
        options.setdefault("port", 5432)
        host = str(options["host"])
        if not host or host.startswith(("/", "@")) or "," in host:
            raise HostedError(
                "Error", f"pg: host {host!r} is not a network host (sockets and host lists are refused)"
            )
        try:
            options["port"] = int(options["port"])
        except (TypeError, ValueError):
            raise HostedError("TypeError", f"pg: port {options['port']!r} is not a number") from None
        millis = given.get("connectionTimeoutMillis")
        seconds = millis / 1000 if isinstance(millis, int | float) and millis > 0 else self._timeout
        options["connect_timeout"] = min(seconds, self._timeout)
        return options

    async def query(self, handle: int, text: str, values: list[Any] | None) -> list[dict[str, Any]]:
        """Every statement's result (several only for a query of several statements and no values)."""
        connection = self._connection(handle)
        try:
            async with psycopg.AsyncRawCursor(connection) as cursor:
                if values is None:
                    await asyncio.wait_for(cursor.execute(str(text).encode()), self._timeout)
                else:
                    params = [_parameter(value) for value in values]
                    await asyncio.wait_for(cursor.execute(str(text).encode(), params), self._timeout)
                results = [_result(cursor)]
                while cursor.nextset():
                    results.append(_result(cursor))
                return results
        except TimeoutError:
            raise HostedError("Error", "Query read timeout") from None
        except psycopg.Error as error:
            raise _database_error(error) from None

    async def end(self, handle: int) -> None:
        connection = self._connections.pop(handle, None)
        if connection is not None:
            await connection.close()

    def _connection(self, handle: int) -> psycopg.AsyncConnection[Any]:
        connection = self._connections.get(handle)
        if connection is None or connection.closed:
            raise HostedError("Error", "Client was closed and is not queryable")
        return connection

    async def close(self) -> None:
        connections = list(self._connections.values())
        self._connections.clear()
        for connection in connections:
            await connection.close()
