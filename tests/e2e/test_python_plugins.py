"""Python plugins in the real server: processEvent, errors, timeouts, runaway loops, onEvent,
exportEvents with retries, jobs, capture, GeoIP, reloads and scheduled tasks."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import psycopg
import redis

from plugin_server.db.teams import CreatedTeam
from plugin_server.plugins.admin import enable_plugin, install_plugin, publish_reload

from .server import celery_app, running_server, send_event, wait_for_count, wait_until

Db = psycopg.Connection[Any]
ASSETS = Path(__file__).parents[1] / "assets"
COUNT_EVENTS = "SELECT COUNT(*) FROM posthog_event"


def write_plugin(folder: Path, name: str, source: str) -> Path:
    plugin = folder / name
    plugin.mkdir()
    (plugin / "plugin.json").write_text(json.dumps({"name": name, "main": "index.py"}))
    (plugin / "index.py").write_text(textwrap.dedent(source))
    return plugin


def install(
    db: Db, tmp_path: Path, team: CreatedTeam, name: str, source: str, config: dict[str, Any] | None = None
) -> int:
    plugin = install_plugin(db, write_plugin(tmp_path, name, source))
    return enable_plugin(db, plugin, team.team_id, config or {}).id


def env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "WORKER_CONCURRENCY": "1", **extra}


def events_by_name(db: Db) -> dict[str, dict[str, Any]]:
    return {
        name: properties for name, properties in db.execute("SELECT event, properties FROM posthog_event")
    }


def config_error(db: Db, config_id: int) -> dict[str, Any] | None:
    row = db.execute("SELECT error FROM posthog_pluginconfig WHERE id = %s", (config_id,)).fetchone()
    return row[0] if row else None


def storage(db: Db, config_id: int, key: str) -> Any:
    row = db.execute(
        "SELECT value FROM posthog_pluginstorage WHERE plugin_config_id = %s AND key = %s", (config_id, key)
    ).fetchone()
    return json.loads(row[0]) if row else None


def test_process_event_transforms_drops_and_survives_errors(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, clean_db: Db
) -> None:
    config_id = install(
        clean_db,
        tmp_path,
        team,
        "transformer",
        """
        async def process_event(event, meta):
            name = event["event"]
            if name == "drop me":
                return None
            if name == "boom":
                event["properties"]["half-done"] = True
                raise ValueError("boom!")
            if name == "garbage":
                return 42
            count = await meta.cache.incr("seen")
            event["properties"]["greeting"] = meta.config["greeting"]
            event["properties"]["seen"] = count
            return event
        """,
        {"greeting": "hej"},
    )
    app = celery_app(redis_url)
    with running_server(tmp_path, env(database_url, redis_url)) as server:
        server.wait_for_log("All systems go")
        for name in ("first", "drop me", "boom", "garbage", "second"):
            send_event(app, team_id=team.team_id, distinct_id="d", event=name, properties={"original": True})
        assert wait_for_count(database_url, COUNT_EVENTS, 4) == 4
        time.sleep(0.5)
    stored = events_by_name(clean_db)
    assert set(stored) == {"first", "boom", "garbage", "second"}
    assert stored["first"]["greeting"] == "hej" and stored["second"]["seen"] == 2
    assert stored["first"]["$plugins_succeeded"] == [f"transformer ({config_id})"]
    for failed in ("boom", "garbage"):
        assert "half-done" not in stored[failed] and stored[failed]["original"] is True
        assert stored[failed]["$plugins_failed"] == [f"transformer ({config_id})"]
    error = config_error(clean_db, config_id)
    assert error is not None and error["message"] in (
        "boom!",
        "processEvent returned int, not an event object",
    )
    logs = [row[0] for row in clean_db.execute("SELECT message FROM posthog_pluginlogentry")]
    assert any(message.startswith("Plugin loaded") for message in logs)
    capabilities = clean_db.execute("SELECT capabilities FROM posthog_plugin").fetchone()
    assert capabilities == ({"methods": ["processEvent"], "scheduled_tasks": [], "jobs": []},)


def test_a_plugin_that_hangs_or_loops_loses_no_event(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, clean_db: Db
) -> None:
    """An await that never ends times out; a CPU loop gets its worker replaced. Both events are stored
    without the plugin's change, the other events go on, and the error is recorded."""
    config_id = install(
        clean_db,
        tmp_path,
        team,
        "runaway",
        """
        import asyncio

        async def process_event(event, meta):
            if event["event"] == "hang":
                await asyncio.Event().wait()
            if event["event"] == "loop":
                while True:
                    pass
            event["properties"]["touched"] = True
            return event
        """,
    )
    app = celery_app(redis_url)
    with running_server(tmp_path, env(database_url, redis_url, TASK_TIMEOUT="1")) as server:
        server.wait_for_log("All systems go")
        for name in ("before", "hang", "loop", "after"):
            send_event(app, team_id=team.team_id, distinct_id="d", event=name)
        assert wait_for_count(database_url, COUNT_EVENTS, 4, timeout=60) == 4
        assert "replacing the worker" in server.log()
        time.sleep(1)
    stored = events_by_name(clean_db)
    assert clean_db.execute(COUNT_EVENTS).fetchone() == (4,)
    assert stored["before"]["touched"] is True and stored["after"]["touched"] is True
    assert "touched" not in stored["hang"] and "touched" not in stored["loop"]
    assert stored["loop"]["$plugins_failed"] == [f"runaway ({config_id})"]
    messages = [
        row[0] for row in clean_db.execute("SELECT message FROM posthog_pluginlogentry WHERE type = 'ERROR'")
    ]
    assert any("timed out" in message for message in messages)
    assert any("worker was replaced" in message for message in messages)


def test_on_event_and_export_events_with_a_retry(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, clean_db: Db
) -> None:
    config_id = install(
        clean_db,
        tmp_path,
        team,
        "exporter",
        """
        from plugin_server.plugin_api import RetryError

        async def on_event(event, meta):
            await meta.storage.set("on_event:" + event["event"], event["properties"].get("n"))

        async def export_events(events, meta):
            attempts = await meta.utils.cursor.increment("attempts")
            if attempts == 1:
                raise RetryError("try again")
            await meta.storage.set("exported", sorted(e["event"] for e in events))
        """,
        {"exportEventsBufferSeconds": "1", "exportEventsToIgnore": "ignored"},
    )
    app = celery_app(redis_url)
    with running_server(tmp_path, env(database_url, redis_url)) as server:
        server.wait_for_log("All systems go")
        for index, name in enumerate(("a", "b", "ignored")):
            send_event(app, team_id=team.team_id, distinct_id="d", event=name, properties={"n": index})
        wait_until(lambda: storage(clean_db, config_id, "exported"), timeout=30)
    assert storage(clean_db, config_id, "exported") == ["a", "b"]
    assert storage(clean_db, config_id, "attempts") == 2
    assert storage(clean_db, config_id, "on_event:b") == 1
    assert storage(clean_db, config_id, "on_event:ignored") == 2
    stored = events_by_name(clean_db)
    assert stored["a"]["$plugins_deferred"] == [f"exporter ({config_id})"]


def test_jobs_capture_and_geoip(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, clean_db: Db
) -> None:
    config_id = install(
        clean_db,
        tmp_path,
        team,
        "jobber",
        """
        async def process_event(event, meta):
            location = await meta.geoip.locate(event["properties"].get("$ip") or event["ip"])
            if location:
                event["properties"]["city"] = location["city"]["names"]["en"]
            if event["event"] == "start":
                await meta.jobs.record({"from": event["distinct_id"]}).run_now()
            return event

        async def record(payload, meta):
            await meta.storage.set("job payload", payload)
            await meta.posthog.capture("captured by job", {"distinct_id": "job-person", "ok": True})

        jobs = {"record": record}
        """,
    )
    app = celery_app(redis_url)
    geoip = str(ASSETS / "GeoLite2-City-Test.mmdb")
    with running_server(tmp_path, env(database_url, redis_url, MMDB_FILE_PATH=geoip)) as server:
        server.wait_for_log("All systems go")
        send_event(app, team_id=team.team_id, distinct_id="starter", event="start", ip="89.160.20.129")
        assert wait_for_count(database_url, COUNT_EVENTS, 2) == 2
    assert storage(clean_db, config_id, "job payload") == {"from": "starter"}
    stored = events_by_name(clean_db)
    assert stored["start"]["city"] == "Linköping"
    assert stored["captured by job"]["ok"] is True
    assert stored["captured by job"]["$lib"] == "posthog-plugin-server"


def test_reload_message_swaps_the_plugin_and_tears_the_old_one_down(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    team: CreatedTeam,
    clean_db: Db,
    redis_client: redis.Redis,
) -> None:
    source = """
        def process_event(event, meta):
            event["properties"]["greeting"] = meta.config["greeting"]
            return event

        async def teardown_plugin(meta):
            await meta.storage.set("torn down", meta.config["greeting"])
        """
    folder = write_plugin(tmp_path, "greeter", source)
    plugin = install_plugin(clean_db, folder)
    config_id = enable_plugin(clean_db, plugin, team.team_id, {"greeting": "one"}).id
    app = celery_app(redis_url)
    with running_server(tmp_path, env(database_url, redis_url)) as server:
        server.wait_for_log("All systems go")
        send_event(app, team_id=team.team_id, distinct_id="d", event="first")
        assert wait_for_count(database_url, COUNT_EVENTS, 1) == 1
        enable_plugin(clean_db, plugin, team.team_id, {"greeting": "two"})
        publish_reload(redis_client, "reload-plugins")
        wait_until(lambda: storage(clean_db, config_id, "torn down") == "one")
        send_event(app, team_id=team.team_id, distinct_id="d", event="second")
        assert wait_for_count(database_url, COUNT_EVENTS, 2) == 2
    stored = events_by_name(clean_db)
    assert (stored["first"]["greeting"], stored["second"]["greeting"]) == ("one", "two")
    assert storage(clean_db, config_id, "torn down") == "two"  # teardown on shutdown too


def test_scheduled_task_runs_once_per_minute_across_two_servers(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, clean_db: Db
) -> None:
    """Both servers compete for the schedule; every period is queued once and its task runs once."""
    config_id = install(
        clean_db,
        tmp_path,
        team,
        "ticker",
        """
        async def run_every_minute(meta):
            await meta.utils.cursor.increment("runs")
        """,
    )
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    settings = env(database_url, redis_url, WORKER_CONCURRENCY="2", SCHEDULE_LOCK_TTL="5")
    with running_server(first, settings) as one, running_server(second, settings) as two:
        one.wait_for_log("All systems go")
        two.wait_for_log("All systems go")
        wait_until(lambda: storage(clean_db, config_id, "runs"), timeout=80)
        time.sleep(3)  # time for a wrong second run of the same period to show up
        runs = storage(clean_db, config_id, "runs")
        periods = clean_db.execute(
            "SELECT COUNT(*) FROM plugin_server_schedule_periods WHERE plugin_config_id = %s AND task = %s",
            (config_id, "runEveryMinute"),
        ).fetchone()
        waiting = clean_db.execute("SELECT COUNT(*) FROM plugin_server_jobs").fetchone()
    assert periods is not None and waiting is not None
    # every period queued has run exactly once, except one that may still be waiting or running
    assert periods[0] - waiting[0] <= runs <= periods[0], (runs, periods, waiting)
