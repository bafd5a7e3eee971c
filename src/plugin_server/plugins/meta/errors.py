"""Errors of plugin configs: the `error` column of posthog_pluginconfig, shown in the PostHog UI."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from psycopg_pool import AsyncConnectionPool

from plugin_server.plugins.meta.logs import PluginLogger

log = logging.getLogger(__name__)


class IllegalOperationError(Exception):
    """A plugin asked for something it may not do (an undeclared metric, too many list elements...)."""


def plugin_error_json(
    error: BaseException | str, event: dict[str, Any] | None, time: datetime
) -> dict[str, Any]:
    """The original's PluginError: `{message, time}` for a string, plus name, stack and event for an error."""
    iso_time = time.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(error, str):
        return {"message": error, "time": iso_time}
    from plugin_server.plugins.js.runtime import JSError  # here: the JS runtime imports this module
    from plugin_server.plugins.runtime_py import plugin_traceback

    body: dict[str, Any] = {"message": str(error), "time": iso_time}
    if isinstance(error, JSError):  # described as JavaScript described it
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


async def clear_plugin_error(pool: AsyncConnectionPool[Any], plugin_config_id: int) -> None:
    """Clear the config's error; no write at all when none is set."""
    async with pool.connection() as connection:
        await connection.execute(
            "UPDATE posthog_pluginconfig SET error = NULL WHERE id = %s AND error IS NOT NULL",
            (plugin_config_id,),
        )


async def disable_plugin_config(pool: AsyncConnectionPool[Any], plugin_config_id: int) -> None:
    """Turn the config off, as after too many failed setup attempts."""
    async with pool.connection() as connection:
        await connection.execute(
            "UPDATE posthog_pluginconfig SET enabled = false WHERE id = %s AND enabled",
            (plugin_config_id,),
        )
