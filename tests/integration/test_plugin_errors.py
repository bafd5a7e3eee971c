"""Plugin config errors on the real database: recorded like the original's processError, cleared, disabled."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from plugin_server.db.teams import CreatedTeam
from plugin_server.plugins.meta.errors import (
    clear_plugin_error,
    disable_plugin_config,
    plugin_error_json,
    record_plugin_error,
)
from plugin_server.plugins.meta.logs import PluginLogger, PluginLogWriter
from tests.integration.test_plugin_logs import INSTANCE_ID, insert_plugin_config, make_logger, stored_entries

Db = psycopg.Connection[Any]


@pytest.fixture
def config_ids(clean_db: Db, team: CreatedTeam) -> tuple[int, int]:
    return insert_plugin_config(clean_db, team)


def config_row(connection: Db, config_id: int) -> tuple[Any, bool]:
    row = connection.execute(
        "SELECT error, enabled FROM posthog_pluginconfig WHERE id = %s", (config_id,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def raised(error: Exception) -> Exception:
    try:
        raise error
    except Exception as caught:
        return caught


def test_error_json_of_a_string_has_only_message_and_time() -> None:
    at = datetime(2021, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert plugin_error_json("plain", {"event": "ignored"}, at) == {
        "message": "plain",
        "time": "2021-01-02T03:04:05.678Z",
    }


def test_error_json_of_an_exception_has_name_stack_and_event() -> None:
    at = datetime(2021, 1, 2, 3, 4, 5, tzinfo=UTC)
    body = plugin_error_json(raised(ValueError("error thrown in plugin")), {"event": "broken event"}, at)
    assert (body["message"], body["name"], body["time"]) == (
        "error thrown in plugin",
        "ValueError",
        "2021-01-02T03:04:05.000Z",
    )
    assert "Traceback" in body["stack"] and body["stack"].rstrip().endswith(
        "ValueError: error thrown in plugin"
    )
    assert body["event"] == {"event": "broken event"}
    assert "event" not in plugin_error_json(ValueError("x"), None, at)


async def test_record_sets_the_error_and_logs_it(
    pool: AsyncConnectionPool[Any], clean_db: Db, team: CreatedTeam, config_ids: tuple[int, int]
) -> None:
    writer = PluginLogWriter(pool)
    logger = make_logger(writer, team, config_ids)
    event = {
        "event": "broken event",
        "properties": {"crash": "throw"},
        "when": datetime(2021, 1, 1, tzinfo=UTC),
    }
    await record_plugin_error(
        pool, logger, config_ids[1], raised(RuntimeError("error thrown in plugin")), event
    )
    await writer.flush()

    error, _ = config_row(clean_db, config_ids[1])
    assert error["message"] == "error thrown in plugin"
    assert error["name"] == "RuntimeError"
    assert error["event"]["properties"] == {"crash": "throw"}
    [entry] = stored_entries(clean_db)
    assert (entry["source"], entry["type"], entry["message"]) == ("PLUGIN", "ERROR", "error thrown in plugin")
    assert entry["timestamp"] == datetime.fromisoformat(error["time"])

    await record_plugin_error(pool, logger, config_ids[1], "a string error")
    error, _ = config_row(clean_db, config_ids[1])
    assert error.keys() == {"message", "time"} and error["message"] == "a string error"


async def test_record_does_not_raise_when_the_database_fails(
    pool: AsyncConnectionPool[Any],
    team: CreatedTeam,
    config_ids: tuple[int, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = PluginLogWriter(pool)
    logger = PluginLogger(
        writer, team_id=team.team_id, plugin_id=1, plugin_config_id=1, instance_id=INSTANCE_ID
    )
    await record_plugin_error(
        pool, logger, config_ids[1], ValueError("x"), {"bad": "\x00 nul is not allowed in jsonb"}
    )
    assert "could not record the error" in caplog.text
    assert writer.buffered == 1  # the log entry is queued all the same


async def test_clear_writes_only_when_an_error_is_set(
    pool: AsyncConnectionPool[Any], clean_db: Db, config_ids: tuple[int, int]
) -> None:
    def row_version() -> Any:
        return clean_db.execute(
            "SELECT xmin::text FROM posthog_pluginconfig WHERE id = %s", (config_ids[1],)
        ).fetchone()

    before = row_version()
    await clear_plugin_error(pool, config_ids[1])
    assert row_version() == before  # no error set: the row was not rewritten

    clean_db.execute(
        'UPDATE posthog_pluginconfig SET error = \'{"message": "old"}\' WHERE id = %s', (config_ids[1],)
    )
    await clear_plugin_error(pool, config_ids[1])
    assert config_row(clean_db, config_ids[1])[0] is None


async def test_clear_older_than_keeps_an_error_recorded_since(
    pool: AsyncConnectionPool[Any], clean_db: Db, config_ids: tuple[int, int]
) -> None:
    def set_error_at(time: str) -> None:
        error = f'{{"message": "m", "time": "{time}"}}'
        clean_db.execute("UPDATE posthog_pluginconfig SET error = %s WHERE id = %s", (error, config_ids[1]))

    loading_since = datetime(2026, 12, 3, 10, 0, 0, 500_000, tzinfo=UTC)
    set_error_at("2026-12-03T10:00:00.501Z")  # recorded while loading: stays
    await clear_plugin_error(pool, config_ids[1], older_than=loading_since)
    assert config_row(clean_db, config_ids[1])[0] == {"message": "m", "time": "2026-12-03T10:00:00.501Z"}
    set_error_at("2026-12-03T10:00:00.499Z")  # from before: cleared
    await clear_plugin_error(pool, config_ids[1], older_than=loading_since)
    assert config_row(clean_db, config_ids[1])[0] is None


async def test_disable(pool: AsyncConnectionPool[Any], clean_db: Db, config_ids: tuple[int, int]) -> None:
    assert config_row(clean_db, config_ids[1])[1] is True
    await disable_plugin_config(pool, config_ids[1])
    assert config_row(clean_db, config_ids[1])[1] is False
    await disable_plugin_config(pool, config_ids[1])
    assert config_row(clean_db, config_ids[1])[1] is False
