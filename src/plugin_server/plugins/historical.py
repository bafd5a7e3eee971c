"""The historical export the original added to every plugin with exportEvents: the public job
"Export historical events" ({dateFrom, dateTo}) sends the team's stored events, oldest first, through
the plugin's exportEvents.

Events are read from where EVENT_STORE stores them (a `StoredEvents` reader: Postgres' `posthog_event`
in id order, or ClickHouse's `events` FINAL in timestamp and uuid order) in 10-minute intervals of their
timestamp, 100 at a time, each marked `$$is_historical_export_event`. Every page is a durable job of the
plugin config ("exportEventsFromTheBeginning" with the interval and offset), queued only once the page
before it was exported: an export that a crash interrupts goes on from its last page, and a page whose
export raises RetryError (or whose read fails) is tried again after 3, 6, 12 ... s, 15 times. The
state lives in the plugin's storage under the original's keys, which plugins read
(posthog-plugin-migrator3000): `is_export_running`, `timestamp_cursor` (ms), `min_timestamp`,
`max_timestamp` (ms, both included). One export runs at a time per plugin config.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from plugin_server.plugin_api import RetryError
from plugin_server.plugins.instance import PluginInstance
from plugin_server.plugins.meta.logs import PluginLogger

START_JOB = "Export historical events"
PAGE_JOB = "exportEventsFromTheBeginning"
JOBS = frozenset({START_JOB, PAGE_JOB})
# What PostHog's UI shows for the public job (posthog_plugin.public_jobs).
PUBLIC_JOB = {
    "payload": {
        "dateFrom": {"title": "Export start date", "type": "date", "required": True},
        "dateTo": {"title": "Export end date", "type": "date", "required": True},
    }
}
INTERVAL = timedelta(minutes=10)
PAGE_SIZE = 100
MAX_RETRIES = 15
FIRST_RETRY_SECONDS = 3

_PAGE = """
    SELECT id, uuid, event, distinct_id, properties, elements, team_id, timestamp, created_at
    FROM posthog_event
    WHERE team_id = %s AND timestamp >= %s AND timestamp < %s
    ORDER BY id
    LIMIT %s OFFSET %s"""
_BOUNDARIES = "SELECT min(timestamp) AS first, max(timestamp) AS last FROM posthog_event WHERE team_id = %s"
_REGISTER = """
    UPDATE posthog_plugin
    SET public_jobs = COALESCE(public_jobs, '{}'::jsonb) || jsonb_build_object(%s::text, %s::jsonb)
    WHERE id = %s AND NOT COALESCE(public_jobs, '{}'::jsonb) ? %s"""


class ReadFailed(Exception):
    """Stored events could not be read (the page is tried again later)."""


class StoredEvents(Protocol):
    """Reads a team's stored events as rows of uuid, event, distinct_id, properties (dict), elements
    (list), team_id, timestamp and created_at (aware datetimes); raises ReadFailed when it cannot."""

    source_db: str  # $$historical_export_source_db

    async def boundaries(self, team_id: int) -> tuple[datetime | None, datetime | None]:
        """The times of the team's first and last events (None, None when it has none)."""
        ...

    async def page(
        self, team_id: int, start: datetime, until: datetime, offset: int, limit: int
    ) -> list[dict[str, Any]]:
        """Events with start <= timestamp < until, in a stable order, `limit` from `offset`."""
        ...


class PostgresStoredEvents:
    source_db = "postgres"

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def _rows(self, sql: str, parameters: tuple[Any, ...]) -> list[dict[str, Any]]:
        try:
            async with (
                self._pool.connection() as connection,
                connection.cursor(row_factory=dict_row) as cursor,
            ):
                await cursor.execute(sql, parameters)
                rows: list[dict[str, Any]] = await cursor.fetchall()
                return rows
        except psycopg.Error as error:
            raise ReadFailed(str(error)) from error

    async def boundaries(self, team_id: int) -> tuple[datetime | None, datetime | None]:
        rows = await self._rows(_BOUNDARIES, (team_id,))
        if not rows or rows[0]["first"] is None:
            return None, None
        return rows[0]["first"], rows[0]["last"]

    async def page(
        self, team_id: int, start: datetime, until: datetime, offset: int, limit: int
    ) -> list[dict[str, Any]]:
        return await self._rows(_PAGE, (team_id, start, until, limit, offset))


class Storage(Protocol):
    async def get(self, key: str, default: Any = None) -> Any: ...

    async def set(self, key: str, value: Any) -> None: ...


class Jobs(Protocol):
    def __getitem__(self, name: str) -> Any: ...


async def register_public_job(pool: AsyncConnectionPool[Any], plugin_id: int) -> None:
    """Add "Export historical events" to the plugin's public jobs, unless it is there."""
    async with pool.connection() as connection:
        await connection.execute(_REGISTER, (START_JOB, Jsonb(PUBLIC_JOB), plugin_id, START_JOB))


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _moment(value: Any) -> datetime | None:
    """A date from a job payload or storage: ISO text (a date alone is its midnight UTC) or ms."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def plugin_event(row: dict[str, Any], exported_at: str, source_db: str = "postgres") -> dict[str, Any]:
    """A stored event as exportEvents gets it, marked as historical (the original's conversion)."""
    properties = dict(row["properties"] or {})
    properties["$$is_historical_export_event"] = True
    properties["$$historical_export_timestamp"] = exported_at
    properties["$$historical_export_source_db"] = source_db
    return {
        "uuid": str(row["uuid"]) if row["uuid"] else None,
        "event": row["event"],
        "distinct_id": row["distinct_id"],
        "team_id": row["team_id"],
        "properties": properties,
        "elements": row["elements"] or [],
        "timestamp": row["timestamp"].isoformat(),
        "now": exported_at,
        "sent_at": row["created_at"].isoformat() if row["created_at"] else None,
        "ip": properties.get("$ip"),
        "site_url": "",
    }


class HistoricalExport:
    """The historical export of one plugin config (its instance, storage, jobs and logs)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        instance: PluginInstance,
        *,
        team_id: int,
        storage: Storage,
        jobs: Jobs,
        logger: PluginLogger,
        events: StoredEvents | None = None,
    ) -> None:
        """`events` reads the stored events (default: Postgres, through `pool`)."""
        self._events = events or PostgresStoredEvents(pool)
        self._instance = instance
        self._team_id = team_id
        self._storage = storage
        self._jobs = jobs
        self._logger = logger

    async def run(self, job: str, payload: Any) -> None:
        """Run START_JOB or PAGE_JOB."""
        if job == START_JOB:
            await self._start(payload if isinstance(payload, dict) else {})
        else:
            await self._page(payload)

    async def _start(self, payload: dict[str, Any]) -> None:
        if await self._storage.get("is_export_running", False):
            self._logger.warn("An export of historical events is already running; this one was not started.")
            return
        start, end = _moment(payload.get("dateFrom")), _moment(payload.get("dateTo"))
        if start is None or end is None:
            first, last = await self._events.boundaries(self._team_id)
            start, end = start or first, end or last
        if start is None or end is None:
            raise ValueError("There are no events to export (no date range given, and no stored events).")
        await self._storage.set("is_export_running", True)
        await self._storage.set("min_timestamp", _millis(start))
        await self._storage.set("max_timestamp", _millis(end))
        await self._storage.set("timestamp_cursor", _millis(start))
        self._logger.info(
            f"Starting the export of historical events from {start.isoformat()} to {end.isoformat()}."
        )
        await self._queue({"timestampCursor": _millis(start), "offset": 0, "retriesPerformedSoFar": 0})

    async def _page(self, payload: dict[str, Any]) -> None:
        cursor = int(payload["timestampCursor"])
        offset, retries = int(payload.get("offset", 0)), int(payload.get("retriesPerformedSoFar", 0))
        last = await self._storage.get("max_timestamp", None)
        if last is None or not await self._storage.get("is_export_running", False):
            return  # the export was stopped (or cleared) meanwhile
        end = int(last) + 1  # max_timestamp is the last millisecond exported
        if cursor >= end:
            await self._finish()
            return
        start = datetime.fromtimestamp(cursor / 1000, UTC)
        until = min(start + INTERVAL, datetime.fromtimestamp(end / 1000, UTC))
        try:
            rows = await self._events.page(self._team_id, start, until, offset, PAGE_SIZE)
            if rows:
                exported_at = datetime.now(UTC).isoformat()
                source_db = self._events.source_db
                await self._instance.export_events(
                    [plugin_event(row, exported_at, source_db) for row in rows]
                )
        except (RetryError, ReadFailed) as error:
            await self._retry(payload, retries, error)
            return
        if len(rows) == PAGE_SIZE:
            await self._queue(
                {"timestampCursor": cursor, "offset": offset + PAGE_SIZE, "retriesPerformedSoFar": 0}
            )
            return
        following = _millis(until)
        await self._storage.set("timestamp_cursor", following)
        await self._log_progress(following)
        await self._queue({"timestampCursor": following, "offset": 0, "retriesPerformedSoFar": 0})

    async def _retry(self, payload: dict[str, Any], retries: int, error: BaseException) -> None:
        if retries >= MAX_RETRIES:
            self._logger.error(
                f"Exporting historical events failed {retries + 1} times, the export stops: {error}"
            )
            await self._storage.set("is_export_running", None)
            return
        delay = FIRST_RETRY_SECONDS * 2**retries
        self._logger.warn(f"Exporting a page of historical events failed ({error}); retrying in {delay} s.")
        await self._queue({**payload, "retriesPerformedSoFar": retries + 1}, delay)

    async def _log_progress(self, cursor: int) -> None:
        start = await self._storage.get("min_timestamp", cursor)
        end = await self._storage.get("max_timestamp", cursor)
        share = 100 if end <= start else min(100, round(100 * (cursor - start) / (end - start)))
        self._logger.debug(f"Historical export progress: {share}%")

    async def _finish(self) -> None:
        await self._storage.set("is_export_running", None)
        self._logger.info("Done exporting all historical events.")

    async def _queue(self, payload: dict[str, Any], delay_seconds: float = 0) -> None:
        runner = self._jobs[PAGE_JOB](payload)
        await (runner.run_in(delay_seconds, "seconds") if delay_seconds else runner.run_now())
