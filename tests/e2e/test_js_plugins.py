"""JavaScript and TypeScript plugins in the real server: transpiled in V8, run per batch, isolated."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import psycopg

from plugin_server.db.teams import CreatedTeam
from plugin_server.plugins.admin import enable_plugin, install_plugin

from .server import celery_app, running_server, send_event, wait_for_count, wait_until
from .test_python_plugins import config_error, env, events_by_name, storage

Db = psycopg.Connection[Any]
PLUGINS = Path(__file__).parents[1] / "assets" / "plugins"


def install_js(db: Db, tmp_path: Path, team: CreatedTeam, name: str, main: str, source: str) -> int:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "plugin.json").write_text(json.dumps({"name": name, "main": main}))
    (folder / main).write_text(textwrap.dedent(source))
    return enable_plugin(db, install_plugin(db, folder), team.team_id, {"greeting": "hi"}).id


def test_js_and_ts_plugins_process_events_in_order_with_meta(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, clean_db: Db
) -> None:
    hello = install_plugin(clean_db, PLUGINS / "hello-js")
    enable_plugin(clean_db, hello, team.team_id, {"greeting": "hej"}, order=1)
    ts_config = install_js(
        clean_db,
        tmp_path,
        team,
        "typed",
        "index.ts",
        """
        import { RetryError } from '@posthog/plugin-scaffold'

        interface Event { event: string; properties: Record<string, unknown>; uuid: string }

        export async function processEvent(event: Event, { cache, storage }: any): Promise<Event | null> {
            if (event.event === 'drop me') {
                return null
            }
            if (event.event === 'loop') {
                while (true) {}
            }
            const seen: number = await cache.incr('seen')
            await storage.set('last', event.event)
            event.properties.seen = seen
            event.properties.upper = event.uuid.toUpperCase()
            event.properties.retryErrorKnown = typeof RetryError === 'function'
            return event
        }
        """,
    )
    app = celery_app(redis_url)
    with running_server(tmp_path, env(database_url, redis_url, TASK_TIMEOUT="2")) as server:
        server.wait_for_log("All systems go")
        for name in ("first", "drop me", "loop", "second"):
            send_event(app, team_id=team.team_id, distinct_id="d", event=name)
        assert wait_for_count(database_url, "SELECT COUNT(*) FROM posthog_event", 3, timeout=60) == 3
        wait_until(lambda: config_error(clean_db, ts_config))
    stored = events_by_name(clean_db)
    assert set(stored) == {"first", "loop", "second"}
    assert stored["first"]["greeting"] == "hej" and stored["first"]["seen"] == 1
    assert stored["second"]["seen"] == 2 and stored["second"]["retryErrorKnown"] is True
    assert "seen" not in stored["loop"] and stored["loop"]["greeting"] == "hej"
    assert stored["loop"]["$plugins_failed"] == [f"typed ({ts_config})"]
    error = config_error(clean_db, ts_config)
    assert error is not None and "timed out after looping" in error["message"]
    assert storage(clean_db, ts_config, "last") == "second"
