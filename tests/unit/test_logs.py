"""Log lines: JSON or human, at LOG_LEVEL, with the team, plugin config and event uuid in force."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest
from structlog.contextvars import bound_contextvars

from plugin_server.config import SettingsError, load_settings
from plugin_server.logs import setup_logging

log = logging.getLogger("plugin_server.test")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]


def test_json_lines_carry_the_bound_context(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "worker-1", "json")
    with bound_contextvars(team_id=2, plugin_config_id=7):
        log.warning("plugin %s failed on %d events", "geoip", 3)
        with bound_contextvars(event_uuid="0180-abc"):
            log.error("onEvent failed")
    log.info("no context here")
    first, second, third = json_lines(capsys)
    assert first["event"] == "plugin geoip failed on 3 events"
    assert first["level"] == "warning"
    assert first["logger"] == "plugin_server.test"
    assert first["process"] == "worker-1"
    assert (first["team_id"], first["plugin_config_id"]) == (2, 7)
    assert str(first["timestamp"]).endswith("Z")
    assert "event_uuid" not in first
    assert (second["team_id"], second["plugin_config_id"], second["event_uuid"]) == (2, 7, "0180-abc")
    assert third["event"] == "no context here"
    assert not {"team_id", "plugin_config_id", "event_uuid"} & third.keys()


def test_context_keys_can_be_passed_as_extra_but_nothing_else(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "worker-0", "json")
    log.warning("dead letter", extra={"team_id": 3, "event_uuid": "u-1", "color_message": "\x1b[1m"})
    (line,) = json_lines(capsys)
    assert (line["team_id"], line["event_uuid"]) == (3, "u-1")
    assert "color_message" not in line


def test_exceptions_are_structured_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "main", "json")
    try:
        raise ValueError("bad value")
    except ValueError:
        log.exception("it failed")
    (line,) = json_lines(capsys)
    (exception,) = line["exception"]  # type: ignore[misc]
    assert exception["exc_type"] == "ValueError" and exception["exc_value"] == "bad value"


def test_human_lines_are_one_readable_line_with_the_context(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "worker-0", "human")
    with bound_contextvars(team_id=2, plugin_config_id=7, event_uuid="0180-abc"):
        log.warning("dead letter: invalid event")
    (line,) = capsys.readouterr().err.splitlines()
    assert "[warning" in line and "dead letter: invalid event" in line
    for part in ("process=worker-0", "team_id=2", "plugin_config_id=7", "event_uuid=0180-abc"):
        assert part in line


def test_log_level_uses_the_original_names(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("warn", "main", "json")
    log.info("hidden")
    log.warning("shown")
    assert [line["event"] for line in json_lines(capsys)] == ["shown"]
    setup_logging("none", "main", "json")
    log.error("hidden too")
    assert json_lines(capsys) == []


def test_log_format_setting() -> None:
    assert load_settings({}).LOG_FORMAT == "human"
    assert load_settings({"LOG_FORMAT": " JSON "}).LOG_FORMAT == "json"
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        load_settings({"LOG_FORMAT": "xml"})
