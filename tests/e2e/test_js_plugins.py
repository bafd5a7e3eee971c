"""JavaScript and TypeScript plugins in the real server: transpiled in V8, run per batch, isolated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from plugin_server.db.teams import CreatedTeam
from plugin_server.plugins.admin import enable_plugin, install_plugin

from .plugin_stack import Stack, write_plugin
from .server import wait_until

Db = psycopg.Connection[Any]
PLUGINS = Path(__file__).parents[1] / "assets" / "plugins"


def install_js(db: Db, tmp_path: Path, team: CreatedTeam, name: str, main: str, source: str) -> int:
    folder = write_plugin(tmp_path, name, source, main)
    return enable_plugin(db, install_plugin(db, folder), team.team_id, {"greeting": "hi"}).id


def test_js_and_ts_plugins_process_events_in_order_with_meta(stack: Stack) -> None:
    hello = install_plugin(stack.db, PLUGINS / "hello-js")
    enable_plugin(stack.db, hello, stack.team.team_id, {"greeting": "hej"}, order=1)
    ts_config = install_js(
        stack.db,
        stack.tmp_path,
        stack.team,
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
    with stack.server(TASK_TIMEOUT="2"):
        for name in ("first", "drop me", "loop", "second"):
            stack.send(name)
        assert stack.wait_for_events(3, timeout=60) == 3
        wait_until(lambda: stack.config_error(ts_config))
    stored = stack.events_by_name()
    assert set(stored) == {"first", "loop", "second"}
    assert stored["first"]["greeting"] == "hej" and stored["first"]["seen"] == 1
    assert stored["second"]["seen"] == 2 and stored["second"]["retryErrorKnown"] is True
    assert "seen" not in stored["loop"] and stored["loop"]["greeting"] == "hej"
    assert stored["loop"]["$plugins_failed"] == [f"typed ({ts_config})"]
    error = stack.config_error(ts_config)
    assert error is not None and "timed out after looping" in error["message"]
    assert stack.storage(ts_config, "last") == "second"
