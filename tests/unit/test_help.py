"""`plugin-server --help` lists the settings group by group."""

from __future__ import annotations

from typer.testing import CliRunner

from plugin_server.cli import app
from plugin_server.config import SETTING_GROUPS, Settings


def test_settings_are_listed_under_their_groups() -> None:
    assert set(SETTING_GROUPS) <= set(Settings.model_fields)
    shown = CliRunner().invoke(app, ["--help"], prog_name="plugin-server").output
    lines = [line.strip() for line in shown.splitlines()]
    headings = [lines.index(f"{title}:") for title in SETTING_GROUPS.values()]
    assert headings == sorted(headings)
    for first, title in SETTING_GROUPS.items():
        assert lines[lines.index(f"{title}:") + 1].startswith(first + " ")
