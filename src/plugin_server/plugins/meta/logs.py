"""Plugin logs: entries in posthog_pluginlogentry, written in batches.

`PluginLogger` is what a plugin config gets (its `console`/`logger`, and the system's own notes about
it); it turns calls into `PluginLogEntry` values and hands them to a `LogEntryWriter`. Writing is
never awaited by plugin code: `write` only buffers, so a slow or broken database cannot slow or
break a plugin. `BufferedLogWriter` does the buffering; `PluginLogWriter` is its Postgres mode, and
sinks/kafka/logs.py its Kafka mode (topic `plugin_log_entries`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from plugin_server.ingestion.uuidt import uuidt
from plugin_server.jsvalues import js_string
from plugin_server.services.metrics import get_metrics

log = logging.getLogger(__name__)


class LogSource(StrEnum):
    SYSTEM = "SYSTEM"
    PLUGIN = "PLUGIN"
    CONSOLE = "CONSOLE"


class LogType(StrEnum):
    DEBUG = "DEBUG"
    LOG = "LOG"
    INFO = "INFO"
    WARN = "WARN"
    ERROR = "ERROR"


@dataclass(frozen=True, slots=True)
class PluginLogEntry:
    id: str
    team_id: int
    plugin_id: int
    plugin_config_id: int
    timestamp: datetime  # UTC
    source: LogSource
    type: LogType
    message: str
    instance_id: str


class LogEntryWriter(Protocol):
    """Where log entries go. `write` must not block or raise; delivery happens in the background."""

    def write(self, entry: PluginLogEntry) -> None: ...

    async def flush(self) -> None: ...

    async def close(self) -> None: ...


# One statement for the whole batch, with one array parameter per column, so the batch size is not
# bound by Postgres's parameter limit. Entries of a config deleted meanwhile are skipped (they could
# never be stored), and a retried batch that was in fact stored is not stored twice.
_INSERT = """
INSERT INTO posthog_pluginlogentry
    (id, team_id, plugin_id, plugin_config_id, timestamp, source, type, message, instance_id)
SELECT e.*
FROM unnest(
    %s::uuid[], %s::int[], %s::int[], %s::int[], %s::timestamptz[],
    %s::varchar[], %s::varchar[], %s::text[], %s::uuid[]
) AS e(id, team_id, plugin_id, plugin_config_id, timestamp, source, type, message, instance_id)
WHERE EXISTS (SELECT 1 FROM posthog_pluginconfig c WHERE c.id = e.plugin_config_id)
ON CONFLICT (id) DO NOTHING
"""


class BufferedLogWriter:
    """Buffers entries and stores them in one `_insert` per flush.

    A flush runs `flush_interval` seconds after the first entry is buffered, on `flush()` and on
    `close()`. When the store cannot be reached (`passing_errors`) the entries are kept and retried at
    the next flush; when it refuses them (bad data) they are dropped, as retrying could never succeed.
    Both are logged. At most `max_buffered` entries are kept: beyond that the oldest are dropped, with a
    warning.
    """

    passing_errors: tuple[type[Exception], ...] = ()

    def __init__(self, *, flush_interval: float = 1.0, max_buffered: int = 10_000) -> None:
        self._flush_interval = flush_interval
        self._buffer: deque[PluginLogEntry] = deque()
        self._max_buffered = max_buffered
        self._dropped = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def write(self, entry: PluginLogEntry) -> None:
        if len(self._buffer) >= self._max_buffered:
            self._buffer.popleft()
            self._dropped += 1
        self._buffer.append(entry)
        self._schedule()

    async def flush(self) -> None:
        self._cancel_timer()
        async with self._lock:
            if self._dropped:
                log.warning("plugin log buffer full: dropped the %d oldest entries", self._dropped)
                self._dropped = 0
            if not self._buffer:
                return
            batch = list(self._buffer)
            self._buffer.clear()
            try:
                await self._insert(batch)
            except self.passing_errors:  # the store is unreachable or busy: try again later
                log.exception("could not store %d plugin log entries, will retry", len(batch))
                self._buffer.extendleft(reversed(batch))
                while len(self._buffer) > self._max_buffered:
                    self._buffer.popleft()
                    self._dropped += 1
                self._schedule()
            except Exception:  # the store refused the data: the same batch would fail forever
                log.exception("plugin log entries rejected by their store: %d dropped", len(batch))

    async def close(self) -> None:
        """Store what is buffered, after any background flush under way; report what could not be."""
        await asyncio.gather(*self._tasks)
        await self.flush()
        self._cancel_timer()
        if self._buffer:
            log.error("closing with %d plugin log entries not stored", len(self._buffer))

    def _schedule(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (yet): entries wait for an explicit flush
        self._timer = loop.call_later(self._flush_interval, self._flush_in_background)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _flush_in_background(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self.flush())
        self._tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)

    async def _insert(self, batch: list[PluginLogEntry]) -> None:
        raise NotImplementedError


class PluginLogWriter(BufferedLogWriter):
    """Stores entries in posthog_pluginlogentry, one statement per flush."""

    passing_errors = (psycopg.OperationalError,)

    def __init__(
        self, pool: AsyncConnectionPool[Any], *, flush_interval: float = 1.0, max_buffered: int = 10_000
    ) -> None:
        super().__init__(flush_interval=flush_interval, max_buffered=max_buffered)
        self._pool = pool

    async def _insert(self, batch: list[PluginLogEntry]) -> None:
        rows = [
            (
                e.id,
                e.team_id,
                e.plugin_id,
                e.plugin_config_id,
                e.timestamp,
                e.source.value,
                e.type.value,
                e.message,
                e.instance_id,
            )
            for e in batch
        ]
        columns = [list(column) for column in zip(*rows, strict=True)]
        async with self._pool.connection() as connection:
            await connection.execute(_INSERT, columns)
        get_metrics().log_entries_created(len(batch))


def format_console_args(args: tuple[object, ...]) -> str:
    """Arguments joined by spaces like the original's console: objects and lists as JSON."""
    return " ".join(_console_string(arg) for arg in args)


def _console_string(arg: object) -> str:
    if isinstance(arg, dict | list | tuple):
        try:
            return orjson.dumps(arg, option=orjson.OPT_NON_STR_KEYS, default=str).decode()
        except TypeError:  # circular or too deep
            return str(arg)
    if isinstance(arg, BaseException):
        message = str(arg)
        return f"{type(arg).__name__}: {message}" if message else type(arg).__name__
    return js_string(arg)


def storable_text(text: str) -> str:
    """`text` without what Postgres text (and UTF-8) cannot hold: NUL characters and lone surrogates."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode(errors="replace").decode()
    return text


class PluginLogger:
    """The log of one plugin config: the plugin's console, and the system's notes about it."""

    __slots__ = ("_instance_id", "_plugin_config_id", "_plugin_id", "_team_id", "_writer")

    def __init__(
        self, writer: LogEntryWriter, *, team_id: int, plugin_id: int, plugin_config_id: int, instance_id: str
    ) -> None:
        self._writer = writer
        self._team_id = team_id
        self._plugin_id = plugin_id
        self._plugin_config_id = plugin_config_id
        self._instance_id = instance_id

    def debug(self, *args: object) -> None:
        self._write(LogSource.CONSOLE, LogType.DEBUG, format_console_args(args))

    def log(self, *args: object) -> None:
        self._write(LogSource.CONSOLE, LogType.LOG, format_console_args(args))

    def info(self, *args: object) -> None:
        self._write(LogSource.CONSOLE, LogType.INFO, format_console_args(args))

    def warn(self, *args: object) -> None:
        self._write(LogSource.CONSOLE, LogType.WARN, format_console_args(args))

    def error(self, *args: object) -> None:
        self._write(LogSource.CONSOLE, LogType.ERROR, format_console_args(args))

    def system(self, type: LogType | str, message: str) -> None:
        """A note from the server about this plugin config, e.g. INFO "Plugin loaded (instance ID …)."."""
        self._write(LogSource.SYSTEM, LogType(type), message)

    def plugin_error(self, message: str, *, timestamp: datetime | None = None) -> None:
        """An error the plugin raised (source PLUGIN, type ERROR), at the time the error was recorded."""
        self._write(LogSource.PLUGIN, LogType.ERROR, message, timestamp)

    def _write(
        self, source: LogSource, type: LogType, message: str, timestamp: datetime | None = None
    ) -> None:
        self._writer.write(
            PluginLogEntry(
                id=uuidt(),
                team_id=self._team_id,
                plugin_id=self._plugin_id,
                plugin_config_id=self._plugin_config_id,
                timestamp=timestamp or datetime.now(UTC),
                source=source,
                type=type,
                message=storable_text(message),
                instance_id=self._instance_id,
            )
        )
