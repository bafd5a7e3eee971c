"""The benchmarks' CPU accounting, the limit benchmark's COPY rows and the Celery benchmark's message pusher,
on real processes, Postgres and Valkey."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import redis
from benchmarks.celery_to_postgres import message_pusher
from benchmarks.cpu import tree_cpu_seconds
from benchmarks.limit import EVENT_COLUMNS, copy_row, minimal_decode

from plugin_server.db.teams import CreatedTeam
from plugin_server.ingestion.celery import PROCESS_EVENT_TASK, encode_task

BURN = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.3: pass\n"
# a parent that runs a child to its end (reaped), then leaves a second child running, having burnt
PARENT = f"""
import subprocess, sys
subprocess.run([sys.executable, "-c", {BURN!r}], check=True)
live = subprocess.Popen([sys.executable, "-c", {BURN!r} + "print(flush=True)\\ninput()"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
live.stdout.readline()
print(live.pid, flush=True)
input()
live.communicate(b"\\n")
"""


def test_tree_cpu_seconds_counts_reaped_and_live_descendants() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        live = int(parent.stdout.readline())
        whole = tree_cpu_seconds(parent.pid)
        without_live = tree_cpu_seconds(parent.pid, {live})
        live_seconds = tree_cpu_seconds(live)
        assert whole >= 0.6  # both children's 0.3 s
        assert without_live >= 0.3  # the reaped child's still counts
        assert live_seconds >= 0.3
        # the live child's counted once, and left out when asked (all three wait now: their times stay;
        # clock ticks are 10 ms, so exact sums are not to be had)
        assert abs(whole - without_live - live_seconds) < 0.015
    finally:
        parent.communicate("\n", timeout=10)
    assert tree_cpu_seconds(parent.pid) == 0.0  # gone


def test_copy_rows_store_awkward_text(team: CreatedTeam, clean_db: psycopg.Connection[Any]) -> None:
    awkward = 'tab\there, new\nline, return\r, back\\slash \\N, quote " ü 😀'
    now = datetime.now(UTC).isoformat()
    data = {
        "event": awkward,
        "timestamp": "2026-12-03T10:00:00+00:00",
        "properties": {"text": awkward, "n": 1},
    }
    message = encode_task(
        PROCESS_EVENT_TASK, [awkward, "10.0.0.1", awkward, data, team.team_id, now, now], queue="q"
    )
    task_id, args = minimal_decode(message)
    with clean_db.cursor().copy(f"COPY posthog_event ({EVENT_COLUMNS}) FROM STDIN") as copy:
        copy.write(copy_row(task_id, args, now.encode()))
    row = clean_db.execute(
        "SELECT uuid::text, event, distinct_id, properties, team_id, timestamp, elements, elements_hash, site_url"
        " FROM posthog_event"
    ).fetchone()
    assert row == (
        task_id,
        awkward,
        awkward,
        {"text": awkward, "n": 1, "$ip": "10.0.0.1"},
        team.team_id,
        datetime(2026, 12, 3, 10, tzinfo=UTC),
        [],
        "",
        awkward,
    )


def test_the_message_pusher_pushes_every_message_oldest_first(redis_client: redis.Redis) -> None:
    messages = [b"message %d" % number for number in range(2_500)]  # three LPUSH commands
    push = message_pusher(redis_client, "bench-queue", messages)
    assert redis_client.llen("bench-queue") == 0  # encoded, not sent, until the push
    push()
    assert [redis_client.rpop("bench-queue") for _ in messages] == messages
    push = message_pusher(redis_client, "bench-queue", messages)
    redis_client.set("bench-queue", "not a list")
    with pytest.raises(redis.ResponseError):
        push()
