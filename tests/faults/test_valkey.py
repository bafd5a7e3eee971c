"""Valkey (the Celery queue's Redis) killed with kill -9 under load and started again on its append-only
file: what producers had pushed and what workers had claimed but not acknowledged is all still there."""

from __future__ import annotations

import time
from pathlib import Path

from plugin_server.db.teams import CreatedTeam
from tests.e2e.server import running_server
from tests.faults.harness import Load, Report, RssWatch, celery_sender, recovery_seconds, tally
from tests.faults.services import PrivateValkey

RUN_BEFORE = 2.0
OUTAGE = 2.0


def test_valkey_killed_and_started_again_with_append_only_persistence(
    tmp_path: Path, database_url: str, team: CreatedTeam, private_valkey: PrivateValkey
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": private_valkey.url,
        "WORKER_CONCURRENCY": "2",
        "DISABLE_WEB": "true",
    }
    with running_server(tmp_path, env) as server:
        server.wait_for_log("All systems go")
        with (
            RssWatch(server.worker_pids) as rss,
            Load(celery_sender(private_valkey.url, team.team_id)) as load,
        ):
            time.sleep(RUN_BEFORE)
            private_valkey.kill()
            time.sleep(OUTAGE)
            private_valkey.start()
            recovered = recovery_seconds(database_url, team.team_id, load.sent)
            time.sleep(RUN_BEFORE)
        result = tally(database_url, team.team_id, load.sent)
    assert load.retries > 0, "producers must have found Valkey gone"
    Report("Valkey kill -9, started again after 2 s", load.sent, result, recovered, rss.max_mb).check()
