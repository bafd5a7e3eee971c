"""Capture API throughput: `wrk` on loopback -> the web process -> the Celery Redis list or a Kafka topic.

Starts Postgres and Valkey (DATABASE_URL / REDIS_URL when set, else embedded ones), team 2, and the web
processes alone (`plugin_server.web.server.web_main`, --web-processes of them on one port as
WEB_CONCURRENCY starts them; no workers, so nothing consumes the queue), then for
each queue drives it with wrk in three request shapes (posthog-js single JSON event to /e/, a
posthog-python /batch/ of 10, a posthog-js gzip-js batch of 10). After each run the messages in the
queue are counted (LLEN; for Kafka by reading the topic, as tansu's "latest" offsets are wrong) and
must equal the events the server counted as accepted (plugin_server_events_received_total).

Besides the web processes' CPU per request, each row gives the queue server's (Valkey, tansu) and
wrk's, and the events/s the machine's cores would give the web processes and the queue server if
nothing else ran on them (cores / their CPU per request): the load generator shares the cores here.

Kafka is a tansu broker (tests/kafka_broker.py); KAFKA_FLUSH_FREQUENCY_MS (the producer's linger, 500 ms
by default) is set to --linger-ms, since every capture request waits for the broker's acknowledgement.

--shapes picks some of the request shapes (single, batch, gzip); --no-aof-rewrite turns Valkey's automatic
AOF rewrite off for the run (CONFIG SET auto-aof-rewrite-percentage 0), to show what the rewrites,
which fork Valkey and write its whole dataset again as the list grows, cost apart from the rest.

    .venv/bin/python -m benchmarks.capture [--duration 10] [--connections 32] [--queue both]
        [--web-processes 1] [--shapes single,batch,gzip] [--no-aof-rewrite] [--profile DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import psycopg
import redis
from prometheus_client.parser import text_string_to_metric_families
from tests.kafka_broker import KafkaBroker, free_port, read_topic

from benchmarks.cpu import tree_cpu_seconds
from benchmarks.machine import machine
from benchmarks.profiling import profiled, py_spy
from benchmarks.services import TEAM_ID, benchmark_services, fresh_database, wait_for_health

LUA_SCRIPT = Path(__file__).with_suffix(".lua")
CELERY_QUEUE = "posthog-plugins"
KAFKA_TOPIC = "events_plugin_ingestion"
BODIES = 100  # distinct bodies per shape, sent in turn (100 persons)
BATCH = 10
WEB_COMMAND = [sys.executable, "-c", "from plugin_server.web.server import web_main; web_main()"]


# --- request bodies -----------------------------------------------------------------------------


def posthog_js_event(token: str, person: int, page: int, now_ms: int) -> dict[str, Any]:
    """A $pageview as posthog-js 1.x sends it: token and distinct_id inside the properties."""
    return {
        "event": "$pageview",
        "uuid": str(uuid.uuid4()),
        "timestamp": datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(),
        "properties": {
            "$os": "Mac OS X",
            "$os_version": "14.5.0",
            "$browser": "Chrome",
            "$browser_version": 126,
            "$device_type": "Desktop",
            "$current_url": f"https://shop.example.com/products/{page}?ref=newsletter",
            "$host": "shop.example.com",
            "$pathname": f"/products/{page}",
            "$raw_user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
            "$screen_height": 1117,
            "$screen_width": 1728,
            "$viewport_height": 959,
            "$viewport_width": 1512,
            "$lib": "web",
            "$lib_version": "1.139.0",
            "$insert_id": uuid.uuid4().hex[:16],
            "$time": now_ms / 1000,
            "distinct_id": f"01903a8e-{person:04d}-7000-8000-{person:012d}",
            "$device_id": f"01903a8e-{person:04d}-7000-8000-{person:012d}",
            "$referrer": "https://www.google.com/",
            "$referring_domain": "www.google.com",
            "$session_id": f"01903a8f-{person:04d}-7000-8000-000000000001",
            "$window_id": f"01903a8f-{person:04d}-7000-8000-000000000002",
            "$pageview_id": str(uuid.uuid4()),
            "$is_identified": False,
            "$process_person_profile": True,
            "token": token,
            "title": f"Product {page} | Example Shop",
        },
    }


def posthog_python_event(index: int) -> dict[str, Any]:
    """One event of a posthog-python batch (the token is given once, beside the batch)."""
    return {
        "event": "order completed",
        "distinct_id": f"customer-{index % BODIES}",
        "uuid": str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).isoformat(),
        "type": "capture",
        "library": "posthog-python",
        "library_version": "3.5.0",
        "properties": {
            "$lib": "posthog-python",
            "$lib_version": "3.5.0",
            "$geoip_disable": True,
            "order_id": f"order-{index}",
            "revenue": round(19.99 + index % 50, 2),
            "currency": "EUR",
            "items": index % 5 + 1,
            "plan": "pro" if index % 2 else "free",
            "coupon": None,
        },
    }


@dataclass(frozen=True)
class Shape:
    """One kind of capture request: where it goes, how it is typed, and how many events it carries."""

    key: str  # its name for --shapes
    name: str
    path: str
    content_type: str
    events_per_request: int
    body: Callable[[str, int], bytes]  # (token, index) -> the request body


def _single(token: str, index: int) -> bytes:
    return json.dumps(posthog_js_event(token, index, index % 37, int(time.time() * 1000))).encode()


def _python_batch(token: str, index: int) -> bytes:
    events = [posthog_python_event(index * BATCH + offset) for offset in range(BATCH)]
    return json.dumps({"api_key": token, "batch": events, "sent_at": datetime.now(UTC).isoformat()}).encode()


def _gzip_batch(token: str, index: int) -> bytes:
    """One browser's queue: 10 pageviews of one person, on different pages."""
    now_ms = int(time.time() * 1000)
    events = [posthog_js_event(token, index, (index + page) % 37, now_ms + page) for page in range(BATCH)]
    return gzip.compress(json.dumps(events).encode())


SHAPES = (
    Shape("single", "single JSON /e/", "/e/?ver=1.139.0", "application/json", 1, _single),
    Shape("batch", "batch of 10 /batch/", "/batch/", "application/json", BATCH, _python_batch),
    Shape(
        "gzip",
        "gzip-js batch of 10 /e/",
        "/e/?compression=gzip-js&ver=1.139.0",
        "text/plain",
        BATCH,
        _gzip_batch,
    ),
)


def write_bodies(folder: Path, shape: Shape, token: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(BODIES):
        (folder / str(index + 1)).write_bytes(shape.body(token, index))


# --- the queues ---------------------------------------------------------------------------------


class Queue(Protocol):
    name: str

    def env(self) -> dict[str, str]:
        """Settings of the web process for this queue."""
        ...

    def reset(self) -> None:
        """Forget the messages counted so far."""
        ...

    def count(self, expected: int) -> int:
        """Messages queued since the last reset (reading at least `expected` where that matters)."""
        ...

    def pid(self) -> int:
        """The queue server's process (Valkey, tansu), whose CPU the benchmark reports."""
        ...


class RedisList:
    name = "redis"

    def __init__(self, redis_url: str) -> None:
        self._client = redis.Redis.from_url(redis_url)

    def env(self) -> dict[str, str]:
        return {"KAFKA_ENABLED": "false", "PLUGINS_CELERY_QUEUE": CELERY_QUEUE}

    def reset(self) -> None:
        self._client.delete(CELERY_QUEUE)

    def count(self, expected: int) -> int:
        return int(self._client.llen(CELERY_QUEUE))

    def pid(self) -> int:
        return int(self._client.info("server")["process_id"])


class KafkaTopic:
    """The topic of a tansu broker; counted by reading it from the start (the topic only grows)."""

    name = "kafka"

    def __init__(self, broker: KafkaBroker, linger_ms: int) -> None:
        self._broker = broker
        self._linger_ms = linger_ms
        self._counted = 0

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_ENABLED": "true",
            "KAFKA_HOSTS": self._broker.bootstrap,
            "KAFKA_CONSUMPTION_TOPIC": KAFKA_TOPIC,
            "KAFKA_FLUSH_FREQUENCY_MS": str(self._linger_ms),
        }

    def reset(self) -> None:
        """Nothing to do: `count` subtracts what earlier runs left in the topic."""

    def pid(self) -> int:
        return self._broker.pid

    def count(self, expected: int) -> int:
        total = self._counted + expected
        try:
            found = len(read_topic(self._broker.bootstrap, KAFKA_TOPIC, total, timeout=30 + total / 5000))
        except AssertionError as error:  # fewer than expected arrived
            raise RuntimeError(f"Kafka topic check failed: {error}") from None
        counted, self._counted = found - self._counted, found
        return counted


# --- the web process and wrk --------------------------------------------------------------------


@contextlib.contextmanager
def web_processes(
    database_url: str, redis_url: str, queue: Queue, count: int
) -> Iterator[tuple[str, list[int]]]:
    """`count` web processes on one free loopback port, as the supervisor starts them (WEB_CONCURRENCY:
    each binds the port with SO_REUSEPORT; metrics in a shared multiprocess folder): (the base URL,
    their pids)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as metrics, tempfile.TemporaryFile() as log:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "WEB_HOSTNAME": "127.0.0.1",
            "WEB_PORT": str(port),
            "LOG_LEVEL": "warn",
            "PROMETHEUS_MULTIPROC_DIR": metrics,  # /metrics then sums the counters of every process
            **queue.env(),
        }
        processes = [subprocess.Popen(WEB_COMMAND, env=env, stdout=log, stderr=log) for _ in range(count)]
        url = f"http://127.0.0.1:{port}"

        def exited() -> str | None:
            for process in processes:
                if process.poll() is not None:
                    log.seek(0)
                    return f"a web process exited with {process.returncode}:\n{log.read().decode()}"
            return None

        try:
            wait_for_health(url, exited)
            wait_for_all(url, {process.pid for process in processes}, exited)
            yield url, [process.pid for process in processes]
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(30)


def wait_for_all(url: str, pids: set[int], exited: Callable[[], str | None], timeout: float = 60) -> None:
    """Until every web process has answered /_health (each request on a new connection, which the
    kernel hands to one of the processes listening on the port)."""
    answered: set[int] = set()
    deadline = time.monotonic() + timeout
    while answered != pids:
        if (reason := exited()) is not None:
            raise RuntimeError(reason)
        if time.monotonic() > deadline:
            raise RuntimeError(f"web processes {sorted(pids - answered)} did not answer /_health")
        answered.add(httpx.get(f"{url}/_health", timeout=5).json()["pid"])


def events_received(url: str) -> int:
    """plugin_server_events_received_total{source="capture"} of the web process, once it stops moving."""
    previous = -1
    while True:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        current = sum(
            int(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "plugin_server_events_received_total"
            and sample.labels.get("source") == "capture"
        )
        if current == previous:  # requests wrk left in flight have finished
            return current
        previous = current
        time.sleep(0.3)


@dataclass(frozen=True)
class WrkResult:
    requests: int  # answered with 2xx/3xx (wrk counts >= 400 as `refused`)
    seconds: float
    refused: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    cpu_seconds: float  # wrk's own (user + system)


def run_wrk(url: str, shape: Shape, bodies: Path, options: argparse.Namespace) -> WrkResult:
    command = ["wrk", f"-t{options.threads}", f"-c{options.connections}", f"-d{options.duration}s"]
    command += ["--timeout", "10s", "-s", str(LUA_SCRIPT), url + shape.path.split("?")[0]]
    command += ["--", str(bodies), str(BODIES), shape.path, shape.content_type]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child reaped meanwhile
    line = next(line for line in output.splitlines() if line.startswith("WRK_RESULT "))
    raw = json.loads(line.removeprefix("WRK_RESULT "))
    return WrkResult(
        requests=raw["requests"] - raw["refused"],
        seconds=raw["duration_us"] / 1e6,
        refused=raw["refused"],
        socket_errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        cpu_seconds=after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
    )


# --- the benchmark ------------------------------------------------------------------------------


def run_queue(
    queue: Queue, database_url: str, redis_url: str, bodies: Path, options: argparse.Namespace
) -> list[str]:
    """One table row per shape; raises if a queue count does not match the accepted events."""
    rows = []
    with web_processes(database_url, redis_url, queue, options.web_processes) as (url, pids):
        for index, shape in enumerate(SHAPES):
            if shape.key not in options.shapes:
                continue
            queue.reset()
            before = events_received(url)
            suffix = "svg" if options.flamegraph else "txt"
            profiles = {
                options.profile / f"{queue.name}-{index + 1}-web{number}.{suffix}": pid
                for number, pid in enumerate(pids)
                if options.profile
            }
            cpu_before = sum(map(tree_cpu_seconds, pids)), tree_cpu_seconds(queue.pid())
            with profiled(profiles, options.duration):
                result = run_wrk(url, shape, bodies / str(index), options)
            accepted = events_received(url) - before
            handled = max(1, accepted // shape.events_per_request)
            web = (sum(map(tree_cpu_seconds, pids)) - cpu_before[0]) / handled
            queue_cpu = (tree_cpu_seconds(queue.pid()) - cpu_before[1]) / handled
            alone = (os.cpu_count() or 1) / (web + queue_cpu)  # requests/s with every core for the server
            queued = queue.count(accepted)
            confirmed = result.requests * shape.events_per_request
            in_flight = options.connections * shape.events_per_request  # answered after wrk stopped
            if queued != accepted or not confirmed <= accepted <= confirmed + in_flight:
                raise RuntimeError(
                    f"{queue.name}, {shape.name}: {queued} messages queued, the server accepted {accepted} "
                    f"events, wrk got {result.requests} answers of {shape.events_per_request} events"
                )
            rows.append(
                f"| {queue.name} | {shape.name} | {result.requests / result.seconds:,.0f} "
                f"| {confirmed / result.seconds:,.0f} | {result.p50_ms:.1f} | {result.p99_ms:.1f} "
                f"| {web * 1e6:,.0f} | {queue_cpu * 1e6:,.0f} | {result.cpu_seconds / handled * 1e6:,.0f} "
                f"| {alone * shape.events_per_request:,.0f} | {result.refused} / {result.socket_errors} "
                f"| {queued:,} = {accepted:,} |"
            )
    return rows


def machine_and_load() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{machine()}, {model}, load average before the run {load}"


@contextlib.contextmanager
def aof_rewrite_off(redis_url: str) -> Iterator[None]:
    """Valkey's automatic AOF rewrite off meanwhile, then as it was (a REDIS_URL server outlives us)."""
    client = redis.Redis.from_url(redis_url)
    setting = "auto-aof-rewrite-percentage"
    before = client.config_get(setting)[setting]
    client.config_set(setting, 0)
    try:
        yield
    finally:
        client.config_set(setting, before)


def shape_keys(text: str) -> set[str]:
    """The --shapes argument: comma-separated keys of SHAPES."""
    keys = {key.strip() for key in text.split(",") if key.strip()}
    known = {shape.key for shape in SHAPES}
    if not keys or keys - known:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(sorted(known))}, comma-separated")
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per shape (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="open connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--web-processes", type=int, default=1, help="web processes on the port (WEB_CONCURRENCY, default 1)"
    )
    parser.add_argument("--queue", choices=["redis", "kafka", "both"], default="both")
    parser.add_argument(
        "--shapes",
        type=shape_keys,
        default={shape.key for shape in SHAPES},
        help="request shapes to run, comma-separated: single, batch, gzip (default all)",
    )
    parser.add_argument(
        "--no-aof-rewrite",
        action="store_true",
        help="turn Valkey's automatic AOF rewrite off for the run (auto-aof-rewrite-percentage 0)",
    )
    parser.add_argument("--linger-ms", type=int, default=5, help="KAFKA_FLUSH_FREQUENCY_MS (default 5)")
    parser.add_argument("--profile", type=Path, help="record py-spy profiles of the web process here")
    parser.add_argument(
        "--flamegraph",
        action="store_true",
        help="with --profile: SVG flame graphs with native frames (py-spy pauses the process to sample)"
        " instead of raw folded stacks",
    )
    options = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("this benchmark needs wrk: apt-get install -y wrk (or brew install wrk)")
    if options.profile:
        py_spy()
        options.profile.mkdir(parents=True, exist_ok=True)
    header = machine_and_load()
    rows = []
    with (
        benchmark_services() as (server_url, redis_url),
        tempfile.TemporaryDirectory() as folder,
        contextlib.ExitStack() as stack,  # closed first, while Valkey still runs
    ):
        database_url = fresh_database(server_url)
        with psycopg.connect(database_url) as connection:
            row = connection.execute(
                "SELECT api_token FROM posthog_team WHERE id = %s", (TEAM_ID,)
            ).fetchone()
        assert row is not None
        stack.enter_context(
            aof_rewrite_off(redis_url) if options.no_aof_rewrite else contextlib.nullcontext()
        )
        bodies = Path(folder)
        for index, shape in enumerate(SHAPES):
            write_bodies(bodies / str(index), shape, str(row[0]))
        if options.queue in ("redis", "both"):
            rows += run_queue(RedisList(redis_url), database_url, redis_url, bodies, options)
        if options.queue in ("kafka", "both"):
            with KafkaBroker() as broker:
                rows += run_queue(
                    KafkaTopic(broker, options.linger_ms), database_url, redis_url, bodies, options
                )
    print(
        f"capture, {options.web_processes} web process(es), wrk -t{options.threads} -c{options.connections} -d{options.duration}s"
    )
    aof = "automatic AOF rewrite off" if options.no_aof_rewrite else "automatic AOF rewrite on"
    print(f"{header}; Valkey: {aof}; Kafka: tansu, KAFKA_FLUSH_FREQUENCY_MS={options.linger_ms}")
    if options.profile:
        print(f"py-spy was sampling the web process (numbers are lower); profiles in {options.profile}")
    print(
        "| queue | request | requests/s | events/s | p50 ms | p99 ms | web CPU µs/request "
        "| queue CPU µs/request | wrk CPU µs/request | events/s, cores for web + queue alone "
        "| refused / socket errors | queued = accepted |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
