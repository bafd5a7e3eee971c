"""Postgres under load: stopped (fast, then immediate) and started again, on a Postgres of the test's own;
and slowed by a proxy that adds latency to every packet. Every event sent is stored once."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import redis

from plugin_server.db.teams import CreatedTeam
from tests.e2e.server import claimed, running_server, wait_until
from tests.faults.harness import Load, Report, RssWatch, celery_sender, recovery_seconds, stored_count, tally
from tests.faults.services import TEAM_ID, PrivatePostgres, postgres_address
from tests.tcp_proxy import TcpProxy

RUN_BEFORE = 2.0
OUTAGE = 3.0
WORKERS, TASKS_PER_WORKER, BATCH_SIZE = 2, 2, 50


def _env(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "WORKER_CONCURRENCY": str(WORKERS),
        "TASKS_PER_WORKER": str(TASKS_PER_WORKER),
        "INGESTION_BATCH_SIZE": str(BATCH_SIZE),
        "DISABLE_WEB": "true",
    }


def test_postgres_stopped_fast_and_immediate_then_started_again(
    tmp_path: Path, private_postgres: PrivatePostgres, redis_url: str, redis_client: redis.Redis
) -> None:
    database_url = private_postgres.url
    recovered = 0.0
    held: list[tuple[int, int]] = []  # (claimed, waiting in the queue) at the end of each outage
    with running_server(tmp_path, _env(database_url, redis_url)) as server:
        server.wait_for_log("All systems go")
        with RssWatch(server.worker_pids) as rss, Load(celery_sender(redis_url, TEAM_ID)) as load:
            for mode in ("fast", "immediate"):
                time.sleep(RUN_BEFORE)
                private_postgres.stop(mode)
                time.sleep(OUTAGE)
                # Backpressure: the workers hold what they claimed and no more; the rest waits in the queue.
                held.append((claimed(redis_client), redis_client.llen("posthog-plugins")))
                private_postgres.start()
                recovered = max(recovered, recovery_seconds(database_url, TEAM_ID, load.sent))
        result = tally(database_url, TEAM_ID, load.sent)
        assert "database or Redis unavailable" in server.log()
    print(f"at the end of each outage (claimed by the workers, waiting in the queue): {held}")
    for holding, waiting in held:
        # each worker: its batches in flight and the next one, claimed while they are
        assert holding <= WORKERS * (TASKS_PER_WORKER + 1) * BATCH_SIZE and waiting > 0
    Report("Postgres stopped (fast, immediate) for 3 s", load.sent, result, recovered, rss.max_mb).check()


def test_postgres_slowed_by_a_latency_adding_proxy(
    tmp_path: Path, database_url: str, redis_url: str, team: CreatedTeam, redis_client: redis.Redis
) -> None:
    with TcpProxy(postgres_address(database_url)) as proxy:
        through_proxy = psycopg.conninfo.make_conninfo(database_url, host="127.0.0.1", port=proxy.port)
        with running_server(tmp_path, _env(through_proxy, redis_url)) as server:
            server.wait_for_log("All systems go")
            with RssWatch(server.worker_pids) as rss, Load(celery_sender(redis_url, team.team_id)) as load:
                time.sleep(RUN_BEFORE)
                with psycopg.connect(through_proxy, autocommit=True) as probe, proxy.slowed(0.05):
                    before = stored_count(database_url, team.team_id)
                    started = time.monotonic()
                    probe.execute("SELECT 1")
                    round_trip = time.monotonic() - started
                    # Ingestion goes on, slower: a batch's round trips now take 100 ms more each.
                    wait_until(lambda: stored_count(database_url, team.team_id) > before, timeout=30)
                    first_stored = time.monotonic() - started
                    time.sleep(max(0.0, OUTAGE - first_stored))
                    during = stored_count(database_url, team.team_id) - before
                    slowed_for = time.monotonic() - started
                recovered = recovery_seconds(database_url, team.team_id, load.sent)
            result = tally(database_url, team.team_id, load.sent)
    print(f"while slowed: first events stored after {first_stored:.1f} s, {during} in {slowed_for:.1f} s")
    assert round_trip >= 0.1
    Report("Postgres slowed (+50 ms each way)", load.sent, result, recovered, rss.max_mb).check()
