"""meta.storage and meta.utils.cursor on the real database, including increments from two pools at once."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.postgres import open_pool
from plugin_server.db.teams import CreatedTeam
from plugin_server.plugins.meta.storage import Cursor, PluginStorage
from tests.integration.test_plugin_logs import insert_plugin_config

Db = psycopg.Connection[Any]


@pytest.fixture
def config_id(clean_db: Db, team: CreatedTeam) -> int:
    return insert_plugin_config(clean_db, team)[1]


@pytest.fixture
def storage(pool: AsyncConnectionPool[Any], config_id: int) -> PluginStorage:
    return PluginStorage(pool, config_id)


def stored(connection: Db, config_id: int) -> dict[str, str]:
    rows = connection.execute(
        "SELECT key, value FROM posthog_pluginstorage WHERE plugin_config_id = %s", (config_id,)
    ).fetchall()
    return dict(rows)


async def test_set_get_delete(storage: PluginStorage, clean_db: Db, config_id: int) -> None:
    """The original's 'meta.storage set/get/del': a counter, and a key set then deleted."""
    await storage.set("counter", -1)
    assert await storage.get("counter") == -1
    await storage.set("counter", 0)
    for expected in (1, 2, 3):
        counter = await storage.get("counter", 999)
        await storage.set("counter", counter + 1)
        await storage.set("deleteme", 10)
        await storage.delete("deleteme")
        assert await storage.get("deleteme", None) is None
        assert counter + 1 == expected
    assert stored(clean_db, config_id) == {"counter": "3"}


@pytest.mark.parametrize(
    "value", ["text", 12, 1.5, True, False, [1, "a", None], {"nested": {"list": [1, 2]}}]
)
async def test_json_values_round_trip(storage: PluginStorage, value: object) -> None:
    await storage.set("key", value)
    assert await storage.get("key", "default") == value


async def test_none_deletes_and_missing_gives_the_default(
    storage: PluginStorage, clean_db: Db, config_id: int
) -> None:
    assert await storage.get("missing") is None
    assert await storage.get("missing", {"default": True}) == {"default": True}
    await storage.set("key", "value")
    await storage.set("key", None)
    assert stored(clean_db, config_id) == {}
    assert await storage.get("key", 7) == 7


async def test_values_that_are_not_json_give_the_default(
    storage: PluginStorage, clean_db: Db, config_id: int
) -> None:
    clean_db.execute(
        "INSERT INTO posthog_pluginstorage (plugin_config_id, key, value) VALUES (%s, 'bad', 'not json'), (%s, 'null', NULL)",
        (config_id, config_id),
    )
    assert await storage.get("bad", "default") == "default"
    assert await storage.get("null", "default") == "default"


async def test_storage_is_per_config(
    pool: AsyncConnectionPool[Any], clean_db: Db, team: CreatedTeam, storage: PluginStorage
) -> None:
    other = PluginStorage(pool, insert_plugin_config(clean_db, team, "other")[1])
    await storage.set("key", "mine")
    await other.set("key", "theirs")
    assert (await storage.get("key"), await other.get("key")) == ("mine", "theirs")
    await other.delete("key")
    assert await storage.get("key") == "mine"


async def test_keys_are_checked(storage: PluginStorage) -> None:
    with pytest.raises(ValueError, match="at most 200"):
        await storage.set("k" * 201, 1)
    with pytest.raises(TypeError, match=r"storage\.get expects a string key"):
        await storage.get(["list"])  # type: ignore[arg-type]
    await storage.set(42, "number key")  # type: ignore[arg-type]
    assert await storage.get("42") == "number key"
    with pytest.raises(TypeError):
        await storage.set("unserialisable", {1, 2})


# ---------------------------------------------------------------- cursor


async def test_cursor_init_and_increment(
    pool: AsyncConnectionPool[Any], storage: PluginStorage, clean_db: Db, config_id: int
) -> None:
    cursor = Cursor(pool, config_id)
    await cursor.init("offset", 10)
    await cursor.init("offset", 500)  # already there: kept
    assert await cursor.increment("offset") == 11
    assert await cursor.increment("offset", 5) == 16
    assert await cursor.increment("offset", 0) == 16
    assert await storage.get("offset") == 16  # the cursor is a storage value
    assert await cursor.increment("fresh", 600_000) == 600_000  # a missing cursor starts from 0
    await cursor.init("default")
    assert stored(clean_db, config_id)["default"] == "0"


async def test_cursor_with_fractions(pool: AsyncConnectionPool[Any], config_id: int) -> None:
    cursor = Cursor(pool, config_id)
    await cursor.init("ratio", 0.5)
    assert await cursor.increment("ratio", 0.25) == 0.75
    assert await cursor.increment("ratio", 0.25) == 1
    assert isinstance(await cursor.increment("ratio", 1), int)


async def test_cursor_arguments_are_checked(
    pool: AsyncConnectionPool[Any], storage: PluginStorage, config_id: int
) -> None:
    cursor = Cursor(pool, config_id)
    with pytest.raises(TypeError, match="initial value must be a number"):
        await cursor.init("c", "10")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="incrementBy value must be a number"):
        await cursor.increment("c", "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await cursor.increment("c", True)
    with pytest.raises(ValueError):
        await cursor.increment("c", float("nan"))
    await storage.set("text", "abc")
    with pytest.raises(ValueError, match="not a number"):
        await cursor.increment("text")


async def test_concurrent_increments_from_two_pools_lose_nothing(
    pool: AsyncConnectionPool[Any], database_url: str, config_id: int
) -> None:
    """Two processes' pools advancing one cursor: every value is handed out exactly once."""
    second = await open_pool(database_url, min_size=4, max_size=4)
    try:
        cursors = [Cursor(pool, config_id), Cursor(second, config_id)]
        await cursors[0].init("shared")
        values = await asyncio.gather(*(cursors[i % 2].increment("shared") for i in range(200)))
    finally:
        await second.close()
    assert sorted(values) == list(range(1, 201))
