"""`meta.storage` and `meta.utils.cursor`: per-config key/value rows in posthog_pluginstorage.

Values are stored as JSON text. The cursor keeps a number in the same table and increments it in
SQL, so that every process and server sharing the database sees one sequence.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from plugin_server.jsvalues import Number, check_key, check_number, js_string

MAX_KEY_LENGTH = 200  # posthog_pluginstorage.key is varchar(200)


def _storage_key(key: object, call: str) -> str:
    text = check_key(key, call)
    if len(text) > MAX_KEY_LENGTH:
        raise ValueError(f"{call} expects a key of at most {MAX_KEY_LENGTH} characters")
    return text


class PluginStorage:
    __slots__ = ("_plugin_config_id", "_pool")

    def __init__(self, pool: AsyncConnectionPool[Any], plugin_config_id: int) -> None:
        self._pool = pool
        self._plugin_config_id = plugin_config_id

    async def get(self, key: str, default: Any = None) -> Any:
        """The stored value, or `default` when there is none (or it is not valid JSON)."""
        name = _storage_key(key, "storage.get")
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                "SELECT value FROM posthog_pluginstorage WHERE plugin_config_id = %s AND key = %s",
                (self._plugin_config_id, name),
            )
            row = await cursor.fetchone()
        if row is None or row["value"] is None:
            return default
        try:
            return orjson.loads(row["value"])
        except orjson.JSONDecodeError:
            return default

    async def set(self, key: str, value: Any) -> None:
        """Store `value` as JSON; None deletes the key (JavaScript's `undefined`)."""
        name = _storage_key(key, "storage.set")
        if value is None:
            await self.delete(name)
            return
        text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
        async with self._pool.connection() as connection:
            await connection.execute(
                """
                INSERT INTO posthog_pluginstorage (plugin_config_id, key, value) VALUES (%s, %s, %s)
                ON CONFLICT (plugin_config_id, key) DO UPDATE SET value = EXCLUDED.value
                """,
                (self._plugin_config_id, name, text),
            )

    async def delete(self, key: str) -> None:
        name = _storage_key(key, "storage.del")
        async with self._pool.connection() as connection:
            await connection.execute(
                "DELETE FROM posthog_pluginstorage WHERE plugin_config_id = %s AND key = %s",
                (self._plugin_config_id, name),
            )


class Cursor:
    """`meta.utils.cursor`: a number per key that many processes can advance safely."""

    __slots__ = ("_plugin_config_id", "_pool")

    def __init__(self, pool: AsyncConnectionPool[Any], plugin_config_id: int) -> None:
        self._pool = pool
        self._plugin_config_id = plugin_config_id

    async def init(self, key: str, initial: Number | None = 0) -> None:
        """Create the cursor at `initial` (None: 0) unless it exists already."""
        name = _storage_key(key, "cursor.init")
        start = check_number(
            0 if initial is None else initial, "The cursor's initial value must be a number!"
        )
        async with self._pool.connection() as connection:
            await connection.execute(
                """
                INSERT INTO posthog_pluginstorage (plugin_config_id, key, value) VALUES (%s, %s, %s)
                ON CONFLICT (plugin_config_id, key) DO NOTHING
                """,
                (self._plugin_config_id, name, js_string(start)),
            )

    async def increment(self, key: str, by: Number | None = 1) -> Number:
        """Add `by` (None: 1; a missing cursor counts as 0); the new value, from one atomic statement."""
        name = _storage_key(key, "cursor.increment")
        step = js_string(check_number(1 if by is None else by, "The incrementBy value must be a number!"))
        try:
            async with self._pool.connection() as connection:
                cursor = await connection.execute(
                    """
                    INSERT INTO posthog_pluginstorage (plugin_config_id, key, value) VALUES (%s, %s, %s)
                    ON CONFLICT (plugin_config_id, key)
                    DO UPDATE SET value = (posthog_pluginstorage.value::numeric + %s::numeric)::text
                    RETURNING value
                    """,
                    (self._plugin_config_id, name, step, step),
                )
                row = await cursor.fetchone()
        except psycopg.DataError:
            raise ValueError(f"cursor.increment: the value of {name!r} is not a number") from None
        assert row is not None
        value = Decimal(row["value"])
        return int(value) if value == value.to_integral_value() else float(value)
