"""The server's one way to open a ClickHouse client. For the readers of stored events and logs
(reads/, and the historical export's sinks/clickhouse/reader.py) it opens at the first read: a worker
or web process whose events go to ClickHouse need not reach it until something reads, and a ClickHouse
that cannot be reached then is a failed read (ReadFailed), not a process that cannot start. The direct
writer's (`for_writing`) opens as its worker starts, on a migrated database.

The in-process chDB engine (CLICKHOUSE_HOST `chdb:///folder`) lets one process at a time open its
folder, and a running server's worker holds it: the web process and the CLI (`for_settings`) then open
the client for each read and close it after, so that they never keep the folder from a worker (while a
worker holds it, their reads fail, saying so)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from functools import partial

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from plugin_server.config import Settings
from plugin_server.plugins.historical import ReadFailed
from plugin_server.sinks.clickhouse.client import AsyncClickHouse, is_in_process, open_client
from plugin_server.sinks.clickhouse.migrate import open_migrated


class ClickHouseConnection:
    """`connect` opens the client (blocking: it runs in a thread); with `keep` it is kept for the
    next reads, else closed after each."""

    def __init__(self, connect: Callable[[], Client], *, keep: bool = True) -> None:
        self._connect = connect
        self._keep = keep
        self._client: AsyncClickHouse | None = None
        self._opening = asyncio.Lock()

    @classmethod
    def for_settings(cls, settings: Settings) -> ClickHouseConnection:
        """Of the CLICKHOUSE_* settings, kept unless it is the in-process engine."""
        return cls(partial(open_client, settings), keep=not is_in_process(settings))

    @classmethod
    def for_writing(cls, settings: Settings) -> ClickHouseConnection:
        """The direct writer's, kept: of CLICKHOUSE_DATABASE, its tables migrated first when AUTO_MIGRATE
        is on (the Kafka tables as Null tables: `plugin-server migrate --clickhouse` makes Kafka-engine
        ones)."""

        def migrated() -> Client:
            return open_migrated(settings)[0]

        return cls(migrated if settings.AUTO_MIGRATE else partial(open_client, settings))

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[AsyncClickHouse]:
        """The client for one read's queries; ClickHouse's errors, opening it or in the queries, become
        ReadFailed."""
        try:
            client = await self.open()
            try:
                yield client
            finally:
                if not self._keep:
                    await client.close()
        except ClickHouseError as error:
            raise ReadFailed(f"ClickHouse: {error}") from error

    async def problem(self) -> str | None:
        """For readiness: None when ClickHouse answers. A connection that is not kept (the in-process
        engine) is not probed: it belongs to the worker, and probing it would fail, or hold it from a
        worker starting meanwhile."""
        if self._keep:
            async with self.client() as client:
                await client.rows("SELECT 1", {})
        return None

    async def open(self) -> AsyncClickHouse:
        """The client, opened now unless a kept one is open already (its errors are ClickHouse's)."""
        if not self._keep:
            return AsyncClickHouse(await asyncio.to_thread(self._connect))
        async with self._opening:
            if self._client is None:
                self._client = AsyncClickHouse(await asyncio.to_thread(self._connect))
            return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
