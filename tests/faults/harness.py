"""Load, memory watch and the final count for fault tests.

A `Load` sends numbered events at a steady rate from a thread of its own, as a client would: a send that
fails is tried again (so an event may arrive twice, and must still be stored once). `tally` then counts,
by number, the events lost (sent, not stored) and doubled (stored more than once). `RssWatch` samples the
resident memory of the server's workers throughout.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import httpx
import psycopg
import redis

from plugin_server.ingestion.celery import encode_task
from tests.e2e.server import PROCESS_EVENT_TASK

# A worker's resident memory must stay below this during every fault: the pipeline holds at most
# TASKS_PER_WORKER batches and the next one, whatever piles up in the queue. (A worker takes about
# 100 MB, 200 MB with a JavaScript plugin's isolate.)
WORKER_RSS_BOUND_MB = 300
NOW = "2021-11-28T10:00:00.000000+00:00"
TALLY = """SELECT COUNT(*), COUNT(DISTINCT properties->>'n') FROM posthog_event
           WHERE team_id = %s AND (properties->>'n')::int < %s"""

Send = Callable[[int], None]
T = TypeVar("T")


class Load:
    """Sends event n = 0, 1, 2... with `send(n)` at `rate` events per second until stopped, or until
    `limit` were sent. Behind schedule (after an outage) it sends as fast as it can to catch up."""

    def __init__(self, send: Send, rate: float = 150, limit: int | None = None) -> None:
        self._send = send
        self._interval = 1 / rate
        self._limit = limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self.sent = 0
        self.retries = 0  # sends that failed and were made again
        self.slowest = 0.0  # seconds, of the slowest send that succeeded

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the load stopped sending (its limit reached); whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> int:
        """Stop sending; the number of events sent (0 .. sent-1)."""
        self._stop.set()
        self._thread.join(60)
        return self.sent

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set() and self.sent != self._limit:
            while True:
                started = time.monotonic()
                try:
                    self._send(self.sent)
                    self.slowest = max(self.slowest, time.monotonic() - started)
                    break
                except (redis.RedisError, httpx.HTTPError, OSError):
                    self.retries += 1
                    if self._stop.wait(0.1):
                        return
            self.sent += 1
            next_at += self._interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))


def celery_sender(redis_url: str, team_id: int) -> Send:
    """Each event as a Celery task on the `posthog-plugins` list, as PostHog's web app enqueues it.

    A push that failed is made again with the same message: Redis may have taken the first push and
    died before answering, and only the same task id (from which an event without a uuid gets its
    uuid) lets the server store the two deliveries once. A new message would be a new event."""
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    encoded: tuple[int, bytes] = (-1, b"")

    def send(n: int) -> None:
        nonlocal encoded
        if encoded[0] != n:
            data = {"event": "load", "properties": {"n": n}, "timestamp": NOW}
            args = [f"person-{n % 20}", "127.0.0.1", "http://localhost", data, team_id, NOW, NOW]
            encoded = (n, encode_task(PROCESS_EVENT_TASK, args, queue="posthog-plugins"))
        client.lpush("posthog-plugins", encoded[1])

    return send


def capture_sender(web_url: str, token: str, batch: int = 1) -> Send:
    """Events posted to the capture API with their own uuids, as posthog-js sends them (a retry sends
    the same uuids); anything but a 200 is a failure to retry. `send(n)` posts events n * batch to
    (n + 1) * batch - 1 in one request, each stamped (`send_time`, epoch seconds) when first tried."""
    client = httpx.Client(timeout=15)  # capture itself answers 503 after 10 s without Kafka
    run = uuid.uuid4()
    first_try = (-1, 0.0)  # (n, when it was first tried)

    def send(n: int) -> None:
        nonlocal first_try
        if first_try[0] != n:
            first_try = (n, time.time())
        events = [
            {
                "event": "load",
                "distinct_id": f"person-{number % 20}",
                "properties": {"n": number, "send_time": first_try[1]},
                "uuid": str(uuid.uuid5(run, str(number))),
            }
            for number in range(n * batch, (n + 1) * batch)
        ]
        response = client.post(f"{web_url}/batch/", json={"api_key": token, "batch": events})
        if response.status_code != 200:
            raise httpx.HTTPStatusError("not accepted", request=response.request, response=response)

    return send


@dataclass
class Tally:
    lost: int
    doubled: int


def tally(database_url: str, team_id: int, sent: int, timeout: float = 60) -> Tally:
    """Wait (up to `timeout`) until every event sent is stored, then count the lost and the doubled."""
    _, rows, distinct = _until_stored(database_url, team_id, sent, timeout)
    return Tally(lost=sent - distinct, doubled=rows - distinct)


def recovery_seconds(database_url: str, team_id: int, sent: int, timeout: float = 90) -> float:
    """Seconds until every event numbered below `sent` (those sent before the fault ended) is stored."""
    seconds, _, distinct = _until_stored(database_url, team_id, sent, timeout)
    assert distinct >= sent, f"{distinct} of the first {sent} events stored within {timeout} s"
    return seconds


def _until_stored(database_url: str, team_id: int, sent: int, timeout: float) -> tuple[float, int, int]:
    """Poll until the events numbered below `sent` are all stored, or `timeout` passed: the seconds
    waited, and the rows and distinct events of those numbers stored."""
    start = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as connection:
        while True:
            row = connection.execute(TALLY, (team_id, sent)).fetchone()
            assert row is not None
            rows, distinct = row
            waited = time.monotonic() - start
            if distinct >= sent or waited > timeout:
                return waited, rows, distinct
            time.sleep(0.1)


def stored_count(database_url: str, team_id: int) -> int:
    with psycopg.connect(database_url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT COUNT(*) FROM posthog_event WHERE team_id = %s", (team_id,)
        ).fetchone()
    return int(row[0]) if row else 0


class RssWatch:
    """Samples the resident memory of the processes `pids()` names, keeping the largest seen."""

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.3) -> None:
        self._pids = pids
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self.max_mb = 0.0

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def sample(self) -> None:
        for pid in safely(self._pids, []):
            self.max_mb = max(self.max_mb, rss_mb(pid))


def safely(pids: Callable[[], T], between_lives: T) -> T:
    """`pids()`, or `between_lives` while the server (or its web process) is down or starting again."""
    try:
        return pids()
    except (AssertionError, httpx.HTTPError, OSError):
        return between_lives


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Report:
    """What one fault did, printed for the README's table (pytest -rP shows it)."""

    fault: str
    sent: int
    tally: Tally
    recovery_seconds: float
    rss_mb: float

    def check(self) -> None:
        print(
            f"FAULT {self.fault}: sent {self.sent}, lost {self.tally.lost}, doubled {self.tally.doubled}, "
            f"recovered in {self.recovery_seconds:.1f} s, worker RSS max {self.rss_mb:.0f} MB"
        )
        assert (self.tally.lost, self.tally.doubled) == (0, 0)
        assert 0 < self.rss_mb < WORKER_RSS_BOUND_MB
