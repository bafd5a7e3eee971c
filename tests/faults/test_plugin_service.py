"""A plugin's outside service hangs (scaled down from minutes to seconds): the plugin's exportEvents calls
time out (TASK_TIMEOUT), their batches are retried later and all delivered once the service answers again, and another
team's events are not slowed meanwhile. Every event of both teams is stored once."""

from __future__ import annotations

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
        plugin = install_plugin(
            clean_db,
            write_plugin(tmp_path, "exporter", EXPORTER, main="index.js"),
            organization_id=team.organization_id,
        )
        enable_plugin(clean_db, plugin, team.team_id, {"url": loopback.url, "exportEventsBufferSeconds": "1"})
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "WORKER_CONCURRENCY": "2",
            "DISABLE_WEB": "true",
            "TASK_TIMEOUT": str(TASK_TIMEOUT),
            "PLUGIN_HTTP_ALLOW_PRIVATE_NETWORKS": "true",
        }
        with running_server(tmp_path, env) as server:
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
