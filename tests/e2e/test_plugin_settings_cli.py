"""`plugins enable --config` checks the settings against the plugin's plugin.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from plugin_server.db.teams import CreatedTeam

from .test_cli import cli

PLUGIN_JSON = {
    "name": "strict",
    "main": "index.py",
    "config": [
        {"key": "mode", "name": "Mode", "type": "choice", "choices": ["fast", "careful"], "required": True},
        {"key": "rules", "name": "Rules", "type": "json"},
        {"key": "token", "name": "Token", "type": "string", "secret": True},
    ],
}


def test_settings_are_checked_against_plugin_json(
    tmp_path: Path, database_url: str, clean_db: psycopg.Connection[Any], team: CreatedTeam
) -> None:
    folder = tmp_path / "strict"
    folder.mkdir()
    (folder / "plugin.json").write_text(json.dumps(PLUGIN_JSON))
    (folder / "index.py").write_text("def process_event(event, meta):\n    return event\n")
    env = {"DATABASE_URL": database_url, "REDIS_URL": ""}
    assert cli("plugins", "install", str(folder), **env).returncode == 0

    refused = cli(
        "plugins", "enable", "strict", "--team", "2", "--config", '{"rules": "{", "colour": 1}', **env
    )
    assert refused.returncode == 1
    assert "warning: 'colour' is not a setting in the plugin.json of strict" in refused.stderr
    assert "Mode (mode) is required; Rules (rules) is not valid JSON" in refused.stderr
    assert clean_db.execute("SELECT count(*) FROM posthog_pluginconfig").fetchone() == (0,)
    wrong = cli("plugins", "enable", "strict", "--team", "2", "--config", '{"mode": "reckless"}', **env)
    assert "Mode (mode) must be one of fast, careful, not 'reckless'" in wrong.stderr

    config = '{"mode": "fast", "token": "t0k", "exportEventsToIgnore": "$pageview"}'
    enabled = cli("plugins", "enable", "strict", "--team", "2", "--config", config, **env)
    assert enabled.returncode == 0, enabled.stderr
    # a required setting stored before need not be given again
    again = cli("plugins", "enable", "strict", "--team", "2", "--config", '{"rules": "[1]"}', **env)
    assert again.returncode == 0, again.stderr
    assert clean_db.execute("SELECT config FROM posthog_pluginconfig").fetchone() == (
        {"mode": "fast", "token": "t0k", "exportEventsToIgnore": "$pageview", "rules": "[1]"},
    )
