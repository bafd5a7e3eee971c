"""`require('snowflake-sdk')` for JS plugins: the host side of its connections over
snowflake-connector-python (snowflake.js is the JS side, which keeps the node SDK's API).

Connections get only the options below from the plugin (account, credentials, context, an
`accessUrl` in place of `<account>.snowflakecomputing.com`); the connector is never asked for the
server's own connection files or defaults, and its probing of the cloud it runs on is turned off. The host goes through the ConnectGuard before connecting
(the connector resolves it again itself). Calls run in threads (the connector blocks), bounded by
TASK_TIMEOUT; binds are positional (`?` or `:1`).
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import itertools
import os
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from plugin_server.plugins.js.hosted import BlockingCalls, HostedError, Operation
from plugin_server.plugins.meta.network import ConnectGuard, ConnectRefused

MAX_CONNECTIONS = 10
MAX_ROWS = 1_000_000

# The connector would otherwise probe the cloud it runs on (instance metadata, and STS with the
# server's own AWS credentials) and report it to whatever Snowflake host a plugin names.
os.environ["SNOWFLAKE_DISABLE_PLATFORM_DETECTION"] = "true"


def _value(value: Any) -> Any:
    """A result value as the node SDK gives it: numbers as numbers, times as ISO text."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return value.hex()
    return value


def _connector() -> ModuleType:
    """snowflake.connector, imported on first use (it takes a quarter of a second)."""
    import snowflake.connector

    return snowflake.connector


def _error(error: Any) -> HostedError:
    """The node SDK's error: OperationFailedError for SQL, NetworkError when Snowflake was not reached."""
    errors = _connector().errors
    failed_statement = isinstance(error, errors.DatabaseError) and not isinstance(
        error, errors.OperationalError
    )
    name = "OperationFailedError" if failed_statement and error.sqlstate else "NetworkError"
    return HostedError(name, str(error.msg or error), code=error.errno, sqlState=error.sqlstate)


class SnowflakeConnections:
    """The Snowflake connections of one isolate, by the handle the plugin's connection holds."""

    def __init__(self, guard: ConnectGuard, timeout: float, blocking: BlockingCalls) -> None:
        self._guard = guard
        self._timeout = timeout
        self._blocking = blocking
        self._connections: dict[int, Any] = {}
        self._handles = itertools.count(1)

    def operations(self) -> dict[str, Operation]:
        return {
            "snowflake.connect": self.connect,
            "snowflake.execute": self.execute,
            "snowflake.destroy": self.destroy,
        }

    async def connect(self, options: dict[str, Any]) -> int:
        if len(self._connections) >= MAX_CONNECTIONS:
            raise HostedError(
                "Error", f"snowflake-sdk: a plugin may hold at most {MAX_CONNECTIONS} connections"
            )
        account = str(options.get("account") or "")
        if not account:
            raise HostedError("TypeError", "snowflake-sdk: the account option is required")
        where: dict[str, Any] = {}
        if options.get("accessUrl"):
            url = urlsplit(str(options["accessUrl"]))
            if url.scheme not in ("http", "https") or not url.hostname:
                raise HostedError("TypeError", "snowflake-sdk: accessUrl must be an http(s) URL")
            where = {
                "host": url.hostname,
                "port": url.port or (443 if url.scheme == "https" else 80),
                "protocol": url.scheme,
            }
        host = where.get("host") or f"{account}.snowflakecomputing.com"
        try:
            await self._guard(str(host), int(where.get("port", 443)))
        except ConnectRefused as error:
            raise HostedError("NetworkError", str(error)) from None
        given = {
            key: str(options[name])
            for key, name in (
                ("user", "username"),
                ("password", "password"),
                ("database", "database"),
                ("schema", "schema"),
                ("warehouse", "warehouse"),
                ("role", "role"),
            )
            if options.get(name)
        }
        connector = await self._blocking.run(_connector)
        try:
            connection = await asyncio.wait_for(
                self._blocking.run(
                    connector.connect,
                    account=account,
                    **given,
                    **where,
                    paramstyle="qmark",
                    # the connector retries until these: leave the plugin time to hear why it failed
                    login_timeout=max(1, int(self._timeout * 0.6)),
                    query_timeout=max(1, int(self._timeout * 0.6)),
                    request_timeout=max(1, int(self._timeout * 0.6)),
                    client_session_keep_alive=False,
                    enable_server_session_keep_alive_auto_detection=False,
                ),
                self._timeout * 2,
            )
        except TimeoutError:
            raise HostedError("NetworkError", "snowflake-sdk: connecting timed out") from None
        except connector.errors.Error as error:
            raise _error(error) from None
        handle = next(self._handles)
        self._connections[handle] = connection
        return handle

    async def execute(self, handle: int, sql: str, binds: list[Any] | None) -> dict[str, Any]:
        connection = self._connections.get(handle)
        if connection is None:
            raise HostedError("Error", "snowflake-sdk: the connection is not up")
        try:
            return await asyncio.wait_for(
                self._blocking.run(self._execute, connection, sql, binds), self._timeout * 2
            )
        except TimeoutError:
            raise HostedError("NetworkError", "snowflake-sdk: the statement timed out") from None
        except _connector().errors.Error as error:
            raise _error(error) from None

    @staticmethod
    def _execute(connection: Any, sql: str, binds: list[Any] | None) -> dict[str, Any]:
        with connection.cursor() as cursor:
            if binds and all(isinstance(row, list) for row in binds):
                cursor.executemany(str(sql), binds)  # the node SDK's array of rows: one statement per row
            else:
                cursor.execute(str(sql), binds or None)
            columns = [column.name for column in cursor.description or ()]
            rows = cursor.fetchmany(MAX_ROWS + 1) if columns else []
            if len(rows) > MAX_ROWS:
                raise HostedError("RangeError", f"snowflake-sdk: more than {MAX_ROWS} rows")
            return {
                "queryId": cursor.sfqid,
                "columns": columns,
                "rows": [[_value(value) for value in row] for row in rows],
                "rowCount": cursor.rowcount,
            }

    async def destroy(self, handle: int) -> None:
        connection = self._connections.pop(handle, None)
        if connection is not None:
            await self._blocking.run(connection.close)

    async def close(self) -> None:
        connections = list(self._connections.values())
        self._connections.clear()
        for connection in connections:
            await self._blocking.run(connection.close)
