"""kill -9 under load: of a worker, of the web process, of the whole instance (then started again).
Every event sent is stored once; the workers' memory stays bounded."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis

from plugin_server.db.teams import CreatedTeam
from tests.e2e.server import running_server
from tests.faults.harness import (
    Load,
    Report,
    RssWatch,
    capture_sender,
    celery_sender,
    recovery_seconds,
    tally,
)

RUN_BEFORE = 2.0  # seconds of load before the fault
RUN_AFTER = 2.0  # and after it


def _env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "WORKER_CONCURRENCY": "2", **extra}


def test_kill_9_of_a_worker(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, redis_client: redis.Redis
) -> None:
    with running_server(tmp_path, _env(database_url, redis_url, DISABLE_WEB="true")) as server:
        server.wait_for_log("All systems go")
        with RssWatch(server.worker_pids) as rss, Load(celery_sender(redis_url, team.team_id)) as load:
            time.sleep(RUN_BEFORE)
            os.kill(server.worker_pids()[0], signal.SIGKILL)
            killed_at = load.sent
            recovered = recovery_seconds(database_url, team.team_id, killed_at)
            time.sleep(RUN_AFTER)
        result = tally(database_url, team.team_id, load.sent)
        assert "starting it again" in server.log()
    Report("kill -9 of a worker", load.sent, result, recovered, rss.max_mb).check()


def test_kill_9_of_the_web_process(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, redis_client: redis.Redis
) -> None:
    with running_server(tmp_path, _env(database_url, redis_url)) as server:
        server.wait_for_log("All systems go")
        web = server.web_pid()
        sender = capture_sender(server.web_url, team.api_token)
        with RssWatch(server.worker_pids) as rss, Load(sender) as load:
            time.sleep(RUN_BEFORE)
            os.kill(web, signal.SIGKILL)
            killed = time.monotonic()
            server.wait_for_web()  # started again by the supervisor (after a second, then backing off)
            recovery_seconds(database_url, team.team_id, load.sent)
            recovered = time.monotonic() - killed
            time.sleep(RUN_AFTER)
        result = tally(database_url, team.team_id, load.sent)
        assert server.web_pid() != web
    assert load.retries > 0, "the kill must have refused some requests"
    Report("kill -9 of the web process", load.sent, result, recovered, rss.max_mb).check()


def test_kill_9_of_the_whole_instance_then_start_again(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, redis_client: redis.Redis
) -> None:
    """The supervisor and all its children die at once; what their workers held is handed back once
    their heartbeats are older than QUEUE_VISIBILITY_TIMEOUT (3 s here)."""
    env = _env(database_url, redis_url, QUEUE_VISIBILITY_TIMEOUT="3", DISABLE_WEB="true")
    with Load(celery_sender(redis_url, team.team_id)) as load:
        with running_server(tmp_path, env, process_group=True) as first:
            first.wait_for_log("All systems go")
            with RssWatch(first.worker_pids) as rss_first:
                time.sleep(RUN_BEFORE)
                os.killpg(first.process.pid, signal.SIGKILL)
                killed_at = load.sent
                first.process.wait(10)
        with running_server(tmp_path, env) as second, RssWatch(second.worker_pids) as rss:
            recovered = recovery_seconds(database_url, team.team_id, killed_at)
            time.sleep(RUN_AFTER)
            load.stop()
            result = tally(database_url, team.team_id, load.sent)
    Report("kill -9 of the instance", load.sent, result, recovered, max(rss.max_mb, rss_first.max_mb)).check()
