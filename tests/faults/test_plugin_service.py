"""A plugin's outside service hangs (scaled down from minutes to seconds): the plugin's exportEvents calls
time out (TASK_TIMEOUT), their batches are retried later and all delivered once the service answers again, and another
team's events are not slowed meanwhile. Every event of both teams is stored once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg
import redis

from plugin_server.db.teams import CreatedTeam, create_organization_and_team
from plugin_server.plugins.admin import enable_plugin, install_plugin
from tests.e2e.plugin_stack import write_plugin
from tests.e2e.server import running_server, wait_until
from tests.faults.harness import Load, Report, RssWatch, celery_sender, recovery_seconds, tally
from tests.faults.plugin_service import EXPORTER, HangingService
from tests.loopback import LoopbackService

RUN_BEFORE = 2.0
HANG = 6.0
TASK_TIMEOUT = 2.0


def enable_exporter(
    connection: psycopg.Connection, team: CreatedTeam, folder: Path, url: str, buffer_seconds: float
) -> None:
    """The exporting plugin, enabled for `team`, sending to `url`."""
    plugin = install_plugin(
        connection,
        write_plugin(folder, "exporter", EXPORTER, main="index.js"),
        organization_id=team.organization_id,
    )
    config = {"url": url, "exportEventsBufferSeconds": str(buffer_seconds)}
    enable_plugin(connection, plugin, team.team_id, config)


def _env(database_url: str, redis_url: str, workers: int) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "WORKER_CONCURRENCY": str(workers),
        "DISABLE_WEB": "true",
        "TASK_TIMEOUT": str(TASK_TIMEOUT),
        "PLUGIN_HTTP_ALLOW_PRIVATE_NETWORKS": "true",
    }


def test_a_plugins_outside_service_hanging(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    team: CreatedTeam,
    clean_db: psycopg.Connection,
    redis_client: redis.Redis,
) -> None:
    other = create_organization_and_team(clean_db, team_name="other", team_id=3)
    service = HangingService()
    with LoopbackService(service.answer) as loopback:
        enable_exporter(clean_db, team, tmp_path, loopback.url, buffer_seconds=1)
        with running_server(tmp_path, _env(database_url, redis_url, workers=2)) as server:
            server.wait_for_log("All systems go")
            with (
                RssWatch(server.worker_pids) as rss,
                Load(celery_sender(redis_url, team.team_id), rate=75) as exported,
                Load(celery_sender(redis_url, other.team_id), rate=75) as others,
            ):
                wait_until(lambda: service.delivered)  # exports flow
                time.sleep(RUN_BEFORE)
                service.up.clear()
                time.sleep(HANG)
                others_sent = others.sent
                service.up.set()
                # The other team's events of the hang are stored at once, not after the plugin's timeouts.
                others_late = recovery_seconds(database_url, other.team_id, others_sent)
                time.sleep(RUN_BEFORE)
            result = tally(database_url, team.team_id, exported.sent)
            result_others = tally(database_url, other.team_id, others.sent)
            # Batches that failed during the hang are tried again after 6 s, then 12 s...
            wait_until(lambda: service.delivered >= set(range(exported.sent)), timeout=40)
            retried = "retried in" in server.log()
    print(
        f"other team's events late by at most {others_late:.1f} s after the hang; {service.hung} exports hung"
    )
    assert service.hung > 0 and retried
    assert others_late < TASK_TIMEOUT
    assert (result_others.lost, result_others.doubled) == (0, 0)
    Report(
        f"plugin's service hanging for {HANG:.0f} s", exported.sent, result, others_late, rss.max_mb
    ).check()


def test_exports_buffered_in_a_killed_worker_are_made_from_their_held_jobs(
    team: CreatedTeam,
    clean_db: psycopg.Connection,
    redis_client: redis.Redis,
    tmp_path: Path,
    database_url: str,
    redis_url: str,
) -> None:
    """kill -9 of a worker whose export buffer holds stored events not yet exported: their held jobs
    come due (buffer seconds + 2 x TASK_TIMEOUT + 30 s) and the restarted worker exports them."""
    service = HangingService()
    sent = 200
    with LoopbackService(service.answer) as loopback:
        enable_exporter(clean_db, team, tmp_path, loopback.url, buffer_seconds=10)
        with running_server(tmp_path, _env(database_url, redis_url, workers=1)) as server:
            server.wait_for_log("All systems go")
            with Load(celery_sender(redis_url, team.team_id), rate=200, limit=sent) as load:
                load.wait(30)
            recovery_seconds(database_url, team.team_id, sent)  # all stored: in the buffer, not exported
            os.kill(server.worker_pids()[0], signal.SIGKILL)
            assert not service.delivered, "the kill must come while the events are in the export buffer"
            killed = time.monotonic()
            wait_until(lambda: service.delivered >= set(range(sent)), timeout=90)
            print(f"all {sent} exports made {time.monotonic() - killed:.0f} s after the kill")
            result = tally(database_url, team.team_id, sent)
    assert (result.lost, result.doubled) == (0, 0)
