"""Python plugins in the real server: processEvent, errors, timeouts, runaway loops, onEvent,
exportEvents with retries, jobs, capture, GeoIP, reloads and scheduled tasks."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from plugin_server.plugins.admin import enable_plugin, install_plugin, publish_reload

from .plugin_stack import COUNT_EVENTS, Stack, write_plugin
from .server import running_server, wait_until

ASSETS = Path(__file__).parents[1] / "assets"


def test_process_event_transforms_drops_and_survives_errors(stack: Stack) -> None:
    config_id = stack.install(
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
    with stack.server():
        for name in ("first", "drop me", "boom", "garbage", "second"):
            stack.send(name, properties={"original": True})
        assert stack.wait_for_events(4) == 4
        time.sleep(0.5)
    stored = stack.events_by_name()
    assert set(stored) == {"first", "boom", "garbage", "second"}
    assert stored["first"]["greeting"] == "hej" and stored["second"]["seen"] == 2
    assert stored["first"]["$plugins_succeeded"] == [f"transformer ({config_id})"]
    for failed in ("boom", "garbage"):
        assert "half-done" not in stored[failed] and stored[failed]["original"] is True
        assert stored[failed]["$plugins_failed"] == [f"transformer ({config_id})"]
    error = stack.config_error(config_id)
    assert error is not None and error["message"] in (
        "boom!",
        "processEvent returned int, not an event object",
    )
    logs = [row[0] for row in stack.db.execute("SELECT message FROM posthog_pluginlogentry")]
    assert any(message.startswith("Plugin loaded") for message in logs)
    capabilities = stack.db.execute("SELECT capabilities FROM posthog_plugin").fetchone()
    assert capabilities == ({"methods": ["processEvent"], "scheduled_tasks": [], "jobs": []},)


def test_a_plugin_that_hangs_or_loops_loses_no_event(stack: Stack) -> None:
    """An await that never ends times out; a CPU loop gets its worker replaced. Both events are stored
    without the plugin's change, the other events go on, and the error is recorded."""
    config_id = stack.install(
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
    with stack.server(TASK_TIMEOUT="1") as server:
        for name in ("before", "hang", "loop", "after"):
            stack.send(name)
        assert stack.wait_for_events(4, timeout=60) == 4
        assert "replacing the worker" in server.log()
        time.sleep(1)
    stored = stack.events_by_name()
    assert stack.db.execute(COUNT_EVENTS).fetchone() == (4,)
    assert stored["before"]["touched"] is True and stored["after"]["touched"] is True
    assert "touched" not in stored["hang"] and "touched" not in stored["loop"]
    assert stored["loop"]["$plugins_failed"] == [f"runaway ({config_id})"]
    messages = [
        row[0] for row in stack.db.execute("SELECT message FROM posthog_pluginlogentry WHERE type = 'ERROR'")
    ]
    assert any("timed out" in message for message in messages)
    assert any("worker was replaced" in message for message in messages)


def test_on_event_and_export_events_with_a_retry(stack: Stack) -> None:
    config_id = stack.install(
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
    with stack.server():
        for index, name in enumerate(("a", "b", "ignored")):
            stack.send(name, properties={"n": index})
        wait_until(lambda: stack.storage(config_id, "exported"), timeout=30)
    assert stack.storage(config_id, "exported") == ["a", "b"]
    assert stack.storage(config_id, "attempts") == 2
    assert stack.storage(config_id, "on_event:b") == 1
    assert stack.storage(config_id, "on_event:ignored") == 2
    stored = stack.events_by_name()
    assert stored["a"]["$plugins_deferred"] == [f"exporter ({config_id})"]


def test_jobs_capture_and_geoip(stack: Stack) -> None:
    config_id = stack.install(
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
    with stack.server(MMDB_FILE_PATH=str(ASSETS / "GeoLite2-City-Test.mmdb")):
        stack.send("start", distinct_id="starter", ip="89.160.20.129")
        assert stack.wait_for_events(2) == 2
    assert stack.storage(config_id, "job payload") == {"from": "starter"}
    stored = stack.events_by_name()
    assert stored["start"]["city"] == "Linköping"
    assert stored["captured by job"]["ok"] is True
    assert stored["captured by job"]["$lib"] == "posthog-plugin-server"


def test_reload_message_swaps_the_plugin_and_tears_the_old_one_down(
    stack: Stack, redis_client: redis.Redis
) -> None:
    source = """
        def process_event(event, meta):
            event["properties"]["greeting"] = meta.config["greeting"]
            return event

        async def teardown_plugin(meta):
            await meta.storage.set("torn down", meta.config["greeting"])
        """
    plugin = install_plugin(stack.db, write_plugin(stack.tmp_path, "greeter", source))
    team_id = stack.team.team_id
    config_id = enable_plugin(stack.db, plugin, team_id, {"greeting": "one"}).id
    with stack.server():
        stack.send("first")
        assert stack.wait_for_events(1) == 1
        enable_plugin(stack.db, plugin, team_id, {"greeting": "two"})
        publish_reload(redis_client, "reload-plugins")
        wait_until(lambda: stack.storage(config_id, "torn down") == "one")
        stack.send("second")
        assert stack.wait_for_events(2) == 2
    stored = stack.events_by_name()
    assert (stored["first"]["greeting"], stored["second"]["greeting"]) == ("one", "two")
    assert stack.storage(config_id, "torn down") == "two"  # teardown on shutdown too


def test_scheduled_task_runs_once_per_minute_across_two_servers(stack: Stack) -> None:
    """Both servers compete for the schedule; every period is queued once and its task runs once."""
    config_id = stack.install(
        "ticker",
        """
        async def run_every_minute(meta):
            await meta.utils.cursor.increment("runs")
        """,
    )
    first, second = stack.tmp_path / "one", stack.tmp_path / "two"
    first.mkdir()
    second.mkdir()
    settings = stack.env(WORKER_CONCURRENCY="2", SCHEDULE_LOCK_TTL="5")
    with running_server(first, settings) as one, running_server(second, settings) as two:
        one.wait_for_log("All systems go")
        two.wait_for_log("All systems go")
        wait_until(lambda: stack.storage(config_id, "runs"), timeout=80)
        time.sleep(3)  # time for a wrong second run of the same period to show up
        runs = stack.storage(config_id, "runs")
        periods = stack.db.execute(
            "SELECT COUNT(*) FROM plugin_server_schedule_periods WHERE plugin_config_id = %s AND task = %s",
            (config_id, "runEveryMinute"),
        ).fetchone()
        waiting = stack.db.execute("SELECT COUNT(*) FROM plugin_server_jobs").fetchone()
    assert periods is not None and waiting is not None
    # every period queued has run exactly once, except one that may still be waiting or running
    assert periods[0] - waiting[0] <= runs <= periods[0], (runs, periods, waiting)
