"""Plugin jobs, capability discovery and plugin metrics in the real server: the Celery task
`plugin_job` sent by PostHog, failing jobs, `run_in`, scheduled tasks found without any event, and
`$$plugin_metrics` events."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from plugin_server.ingestion.celery import PLUGIN_JOB_TASK

from .plugin_stack import Stack
from .server import wait_until


def failed_jobs(stack: Stack, config_id: int) -> list[tuple[str, str]]:
    """(type, last_error) of the config's failed jobs."""
    rows = stack.db.execute(
        "SELECT type, last_error FROM posthog_pluginconfig c "
        "JOIN plugin_server_jobs j ON j.plugin_config_id = c.id "
        "WHERE c.id = %s AND j.status = 'failed'",
        (config_id,),
    ).fetchall()
    return [(row[0], row[1]) for row in rows]


def test_celery_plugin_job_tasks_run_jobs_and_failures_are_recorded(stack: Stack) -> None:
    config_id = stack.install(
        "job runner",
        """
        import time

        async def my_job(payload, meta):
            await meta.storage.set("myJob payload", payload)

        async def broken(payload, meta):
            raise ValueError("the job broke")

        async def first(payload, meta):
            await meta.storage.set("first ran at", time.time())
            await meta.jobs.second({"from": "first"}).run_in(1, "second")

        async def second(payload, meta):
            await meta.storage.set("second ran at", time.time())
            await meta.storage.set("second payload", payload)

        jobs = {"myJob": my_job, "broken": broken, "first": first, "second": second}
        """,
    )
    with stack.server():
        for job, payload in (("myJob", {"x": 1}), ("broken", {}), ("first", None)):
            stack.app.send_task(
                PLUGIN_JOB_TASK,
                args=[stack.team.team_id, config_id, job, "start", payload],
                queue="posthog-plugins",
            )
        wait_until(lambda: stack.storage(config_id, "myJob payload"), timeout=15)
        wait_until(lambda: failed_jobs(stack, config_id), timeout=15)
        wait_until(lambda: stack.storage(config_id, "second ran at"), timeout=15)

    assert stack.storage(config_id, "myJob payload") == {"x": 1, "$operation": "start"}
    [(job_type, last_error)] = failed_jobs(stack, config_id)
    assert job_type == "broken" and "ValueError: the job broke" in last_error
    error = stack.config_error(config_id)
    assert error is not None and (error["message"], error["name"]) == ("the job broke", "ValueError")
    delay = stack.storage(config_id, "second ran at") - stack.storage(config_id, "first ran at")
    assert 0.9 <= delay < 5, delay
    assert stack.storage(config_id, "second payload") == {"from": "first"}
    # Jobs that succeeded are gone from the queue; only the failed one is kept.
    assert stack.db.execute("SELECT type FROM plugin_server_jobs").fetchall() == [("broken",)]


def test_capabilities_of_a_plugin_with_only_a_scheduled_task_are_found_without_events(stack: Stack) -> None:
    """Otherwise its task would never be scheduled: capabilities come from a set-up plugin."""
    stack.install(
        "ticker",
        """
        async def run_every_minute(meta):
            pass
        """,
    )

    def capabilities() -> Any:
        row = stack.db.execute("SELECT capabilities FROM posthog_plugin").fetchone()
        return row[0] if row else None

    assert capabilities() == {}
    with stack.server():
        started = time.monotonic()
        wait_until(capabilities, timeout=15)
        assert time.monotonic() - started < 10  # at start, not at the next reload
    assert capabilities() == {"methods": [], "scheduled_tasks": ["runEveryMinute"], "jobs": []}


def test_plugin_metrics_are_reported_as_plugin_metrics_events(stack: Stack) -> None:
    stack.install(
        "counter",
        """
        metrics = {"handled": "sum"}

        def process_event(event, meta):
            if event["event"] != "$$plugin_metrics":  # count only the events the test sends
                meta.metrics["handled"].increment(1)
            return event
        """,
    )
    plugin_id = stack.db.execute("SELECT id FROM posthog_plugin").fetchone()

    def reports() -> list[tuple[int, str, dict[str, Any]]]:
        return stack.db.execute(
            "SELECT team_id, distinct_id, properties FROM posthog_event WHERE event = '$$plugin_metrics'"
        ).fetchall()

    with stack.server(PLUGIN_METRICS_INTERVAL_SECONDS="1"):
        stack.send("one")
        stack.send("two")
        # The two increments may be reported in one event or in two consecutive ones.
        wait_until(lambda: sum(properties["handled"] for _, _, properties in reports()) == 2, timeout=15)

    for team_id, distinct_id, properties in reports():
        assert (team_id, distinct_id) == (stack.team.team_id, "counter")
        assert properties["plugin_name"] == "counter"
        assert (properties["plugin_id"],) == plugin_id
        assert properties["$lib"] == "posthog-plugin-server"


def test_a_job_survives_kill_9_of_its_worker(stack: Stack) -> None:
    """The worker running a job is killed; the job's lease runs out and it runs again to the end."""
    config_id = stack.install(
        "slow job",
        """
        import asyncio

        async def slow(payload, meta):
            await meta.utils.cursor.increment("started")
            await asyncio.sleep(payload["seconds"])
            await meta.storage.set("finished", True)

        async def process_event(event, meta):
            if event["event"] == "go":
                await meta.jobs.slow({"seconds": 3}).run_now()
            return event

        jobs = {"slow": slow}
        """,
    )
    with stack.server(JOB_LEASE_SECONDS="2") as server:
        stack.send("go")
        wait_until(lambda: stack.storage(config_id, "started") == 1)
        (worker,) = server.worker_pids()
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: stack.storage(config_id, "finished"), timeout=30)
    assert stack.storage(config_id, "started") == 2
    assert stack.db.execute("SELECT COUNT(*) FROM plugin_server_jobs").fetchone() == (0,)
