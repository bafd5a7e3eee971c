"""Plugin logs on the real database: console formatting, batching, retries, the buffer cap."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.plugins.meta.logs import (
    LogSource,
    LogType,
    PluginLogEntry,
    PluginLogger,
    PluginLogWriter,
    format_console_args,
)
from tests.conftest import Counted

Db = psycopg.Connection[Any]
INSTANCE_ID = str(uuid.uuid4())


def insert_plugin_config(connection: Db, team: CreatedTeam, name: str = "test plugin") -> tuple[int, int]:
    """A posthog_plugin row and an enabled posthog_pluginconfig of it for the team: (plugin_id, config_id)."""
    plugin = connection.execute(
        "INSERT INTO posthog_plugin (organization_id, name, plugin_type) VALUES (%s, %s, 'source') RETURNING id",
        (team.organization_id, name),
    ).fetchone()
    assert plugin is not None
    config = connection.execute(
        'INSERT INTO posthog_pluginconfig (team_id, plugin_id, enabled, "order") VALUES (%s, %s, true, 0) RETURNING id',
        (team.team_id, plugin[0]),
    ).fetchone()
    assert config is not None
    return int(plugin[0]), int(config[0])


def stored_entries(connection: Db) -> list[dict[str, Any]]:
    with connection.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        return cursor.execute("SELECT * FROM posthog_pluginlogentry ORDER BY timestamp, id").fetchall()


@pytest.fixture
def config_ids(clean_db: Db, team: CreatedTeam) -> tuple[int, int]:
    return insert_plugin_config(clean_db, team)


def make_logger(writer: Any, team: CreatedTeam, config_ids: tuple[int, int]) -> PluginLogger:
    plugin_id, plugin_config_id = config_ids
    return PluginLogger(
        writer,
        team_id=team.team_id,
        plugin_id=plugin_id,
        plugin_config_id=plugin_config_id,
        instance_id=INSTANCE_ID,
    )


# ---------------------------------------------------------------- console formatting (original's console.test.ts)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), ""),
        (("number =", 987), "number = 987"),
        ((ValueError("something"),), "ValueError: something"),
        ((RuntimeError(),), "RuntimeError"),
        (({1: "ein", 2: "zwei"},), '{"1":"ein","2":"zwei"}'),
        (([99, 79],), "[99,79]"),
        ((True, None, 1.0, 1.5, float("nan")), "true null 1 1.5 NaN"),
        (("nested", {"a": [1, {"b": None}]}), 'nested {"a":[1,{"b":null}]}'),
    ],
)
def test_console_arguments_are_formatted_like_the_original(args: tuple[object, ...], message: str) -> None:
    assert format_console_args(args) == message


def test_a_circular_object_is_still_logged() -> None:
    circular: list[Any] = [1]
    circular.append(circular)
    assert format_console_args((circular,)) == "[1, [...]]"


@pytest.mark.parametrize("method", ["debug", "log", "info", "warn", "error"])
async def test_each_console_method_leaves_an_entry_of_its_type(
    method: str, pool: AsyncConnectionPool[Any], clean_db: Db, team: CreatedTeam, config_ids: tuple[int, int]
) -> None:
    writer = PluginLogWriter(pool)
    logger = make_logger(writer, team, config_ids)
    getattr(logger, method)("number =", 987)
    await writer.flush()

    [entry] = stored_entries(clean_db)
    assert entry["type"] == method.upper()
    assert entry["source"] == "CONSOLE"
    assert entry["message"] == "number = 987"
    assert (entry["team_id"], entry["plugin_id"], entry["plugin_config_id"]) == (team.team_id, *config_ids)
    assert str(entry["instance_id"]) == INSTANCE_ID
    assert abs((entry["timestamp"] - datetime.now(UTC)).total_seconds()) < 60


async def test_system_and_plugin_error_entries(
    pool: AsyncConnectionPool[Any], clean_db: Db, team: CreatedTeam, config_ids: tuple[int, int]
) -> None:
    writer = PluginLogWriter(pool)
    logger = make_logger(writer, team, config_ids)
    logger.system("INFO", "Plugin loaded (instance ID x).")
    logger.system(LogType.WARN, "careful")
    at = datetime(2021, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    logger.plugin_error("boom", timestamp=at)
    with pytest.raises(ValueError):
        logger.system("LOUD", "not a type")
    await writer.close()

    entries = {entry["message"]: entry for entry in stored_entries(clean_db)}
    assert len(entries) == 3
    assert (entries["Plugin loaded (instance ID x)."]["source"], entries["careful"]["type"]) == (
        "SYSTEM",
        "WARN",
    )
    assert (entries["boom"]["source"], entries["boom"]["type"], entries["boom"]["timestamp"]) == (
        "PLUGIN",
        "ERROR",
        at,
    )


async def test_text_postgres_cannot_hold_is_replaced(
    pool: AsyncConnectionPool[Any], clean_db: Db, team: CreatedTeam, config_ids: tuple[int, int]
) -> None:
    writer = PluginLogWriter(pool)
    logger = make_logger(writer, team, config_ids)
    logger.log("nul \x00 byte")
    logger.log("lone \ud800 surrogate")
    await writer.close()
    assert sorted(entry["message"] for entry in stored_entries(clean_db)) == [
        "lone ? surrogate",
        "nul \ufffd byte",
    ]


# ---------------------------------------------------------------- batching


async def test_entries_are_inserted_in_one_statement_one_interval_after_the_first(
    counted: Counted, clean_db: Db, team: CreatedTeam, config_ids: tuple[int, int]
) -> None:
    pool, statements = counted
    writer = PluginLogWriter(pool, flush_interval=0.2)
    logger = make_logger(writer, team, config_ids)
    for i in range(50):
        logger.info("entry", i)
    await asyncio.sleep(0.05)
    assert stored_entries(clean_db) == []
    assert writer.buffered == 50

    await asyncio.sleep(0.4)
    assert len(stored_entries(clean_db)) == 50
    assert len([s for s in statements if "posthog_pluginlogentry" in s]) == 1
    assert writer.buffered == 0
    await writer.close()


async def test_close_stores_what_is_buffered(
    pool: AsyncConnectionPool[Any], clean_db: Db, team: CreatedTeam, config_ids: tuple[int, int]
) -> None:
    writer = PluginLogWriter(pool, flush_interval=60)
    logger = make_logger(writer, team, config_ids)
    logger.warn("before shutdown")
    await writer.close()
    assert [entry["message"] for entry in stored_entries(clean_db)] == ["before shutdown"]


async def test_a_batch_stored_twice_is_stored_once(
    pool: AsyncConnectionPool[Any], clean_db: Db, team: CreatedTeam, config_ids: tuple[int, int]
) -> None:
    """A retry after an insert whose answer was lost must not fail on the primary key forever."""
    writer = PluginLogWriter(pool)
    entry = PluginLogEntry(
        id=str(uuid.uuid4()),
        team_id=team.team_id,
        plugin_id=config_ids[0],
        plugin_config_id=config_ids[1],
        timestamp=datetime.now(UTC),
        source=LogSource.SYSTEM,
        type=LogType.INFO,
        message="once",
        instance_id=INSTANCE_ID,
    )
    writer.write(entry)
    await writer.flush()
    writer.write(entry)
    await writer.flush()
    assert len(stored_entries(clean_db)) == 1


# ---------------------------------------------------------------- failures


class FlakyPool:
    """A real pool whose next `failures` connections fail as if the database were unreachable."""

    def __init__(self, pool: AsyncConnectionPool[Any], failures: int) -> None:
        self._pool = pool
        self.failures = failures

    def connection(self) -> Any:
        if self.failures:
            self.failures -= 1
            raise psycopg.OperationalError("connection refused")
        return self._pool.connection()


async def test_a_failed_insert_is_logged_and_retried_at_the_next_flush(
    pool: AsyncConnectionPool[Any],
    clean_db: Db,
    team: CreatedTeam,
    config_ids: tuple[int, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = FlakyPool(pool, failures=1)
    writer = PluginLogWriter(flaky, flush_interval=0.1)  # type: ignore[arg-type]
    logger = make_logger(writer, team, config_ids)
    logger.log("first")
    await writer.flush()  # fails, and does not raise
    assert "will retry" in caplog.text
    assert stored_entries(clean_db) == []
    assert writer.buffered == 1

    logger.log("second")
    await asyncio.sleep(0.3)  # the retry is scheduled by itself
    assert [entry["message"] for entry in stored_entries(clean_db)] == ["first", "second"]
    await writer.close()


async def test_entries_of_a_deleted_config_are_skipped_and_the_rest_stored(
    pool: AsyncConnectionPool[Any], clean_db: Db, team: CreatedTeam, config_ids: tuple[int, int]
) -> None:
    other = insert_plugin_config(clean_db, team, "deleted soon")
    writer = PluginLogWriter(pool)
    make_logger(writer, team, config_ids).log("kept")
    make_logger(writer, team, other).log("lost with its config")
    clean_db.execute("DELETE FROM posthog_pluginconfig WHERE id = %s", (other[1],))
    await writer.close()
    assert [entry["message"] for entry in stored_entries(clean_db)] == ["kept"]


async def test_entries_the_database_rejects_are_dropped_not_retried_forever(
    pool: AsyncConnectionPool[Any],
    clean_db: Db,
    team: CreatedTeam,
    config_ids: tuple[int, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = PluginLogWriter(pool)
    bad = PluginLogger(
        writer, team_id=999, plugin_id=config_ids[0], plugin_config_id=config_ids[1], instance_id=INSTANCE_ID
    )
    bad.error("for a team that does not exist")
    await writer.flush()
    assert "rejected by their store" in caplog.text
    assert writer.buffered == 0

    make_logger(writer, team, config_ids).info("later entries still go in")
    await writer.close()
    assert [entry["message"] for entry in stored_entries(clean_db)] == ["later entries still go in"]


async def test_the_buffer_keeps_the_newest_entries_when_full(
    pool: AsyncConnectionPool[Any],
    clean_db: Db,
    team: CreatedTeam,
    config_ids: tuple[int, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = PluginLogWriter(pool, flush_interval=60, max_buffered=3)
    logger = make_logger(writer, team, config_ids)
    for i in range(5):
        logger.info(i)
    assert writer.buffered == 3
    with caplog.at_level(logging.WARNING):
        await writer.close()
    assert "dropped the 2 oldest entries" in caplog.text
    assert sorted(entry["message"] for entry in stored_entries(clean_db)) == ["2", "3", "4"]
