"""Errors of plugin configs: the `error` column of posthog_pluginconfig, shown in the PostHog UI."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from psycopg_pool import AsyncConnectionPool

from plugin_server.plugins.meta.logs import PluginLogger

log = logging.getLogger(__name__)


class ThrownInJS(Exception):
    """Base of the exceptions that stand for an error JavaScript plugin code threw: `str()` is its
    message; `name` and `stack` are JavaScript's (what a plugin author can use, not a Python traceback)."""

    def __init__(self, name: str, message: str, stack: str | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.stack = stack


class IllegalOperationError(Exception):
    """A plugin asked for something it may not do (an undeclared metric, too many list elements...)."""


def plugin_error_json(
    error: BaseException | str, event: dict[str, Any] | None, time: datetime
) -> dict[str, Any]:
    """The original's PluginError: `{message, time}` for a string, plus name, stack and event for an error."""
    iso_time = error_time(time)
    if isinstance(error, str):
        return {"message": error, "time": iso_time}
    from plugin_server.plugins.runtime_py import plugin_traceback  # here: that module imports this one

    body: dict[str, Any] = {"message": str(error), "time": iso_time}
    if isinstance(error, ThrownInJS):  # described as JavaScript described it
        body["name"], body["stack"] = error.name, error.stack or plugin_traceback(error)
    else:
        body["name"], body["stack"] = type(error).__name__, plugin_traceback(error)
    if event is not None:
        body["event"] = event
    return body


async def record_plugin_error(
    pool: AsyncConnectionPool[Any],
    logger: PluginLogger,
    plugin_config_id: int,
    error: BaseException | str,
    event: dict[str, Any] | None = None,
) -> None:
    """Set the config's error and log it (source PLUGIN, type ERROR).

    Called while handling a plugin's failure, so it never raises: if the database cannot take the
    error, that is logged here and the plugin log entry is still queued."""
    now = datetime.now(UTC)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # the log entry's time equals the error's
    body = plugin_error_json(error, event, now)
    logger.plugin_error(body["message"], timestamp=now)
    try:
        text = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS, default=str).decode()
        async with pool.connection() as connection:
            await connection.execute(
                "UPDATE posthog_pluginconfig SET error = %s::jsonb WHERE id = %s", (text, plugin_config_id)
            )
    except Exception:  # the database is down, or the event cannot be stored as jsonb
        log.exception("could not record the error of plugin config %s", plugin_config_id)


def error_time(time: datetime) -> str:
    """The `time` of an error record: ISO 8601 in UTC to the millisecond, so records sort as text."""
    return time.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def clear_plugin_error(
    pool: AsyncConnectionPool[Any], plugin_config_id: int, *, older_than: datetime | None = None
) -> None:
    """Clear the config's error (only one recorded before `older_than`, when given); no write at all
    when none is set."""
    bound = error_time(older_than) if older_than is not None else None
    async with pool.connection() as connection:
        await connection.execute(
            "UPDATE posthog_pluginconfig SET error = NULL WHERE id = %s AND error IS NOT NULL"
            " AND (%s::text IS NULL OR COALESCE(error->>'time', '') < %s)",
            (plugin_config_id, bound, bound),
        )


async def disable_plugin_config(pool: AsyncConnectionPool[Any], plugin_config_id: int) -> None:
    """Turn the config off, as after too many failed setup attempts."""
    async with pool.connection() as connection:
        await connection.execute(
            "UPDATE posthog_pluginconfig SET enabled = false WHERE id = %s AND enabled",
            (plugin_config_id,),
        )
