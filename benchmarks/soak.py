"""Soak: a steady stream of events through capture -> Celery list -> JS and Python plugins -> Postgres,
with one fault every minute, counting events lost and doubled, latency from capture to row, and each
process's resident memory over time (plotted to a PNG).

The server runs with a Postgres and a Valkey of its own (started here, as the fault tests start theirs:
tests/faults/services.py), reaching Postgres through a TCP proxy that can slow it. Team 2 has three
plugins: the benchmark plugin in JavaScript and in Python (processEvent), and a JavaScript one exporting
every event's number to a service on loopback. Events are posted to `/batch/` by the fault tests' load
generator (a failed request is sent again, same uuids), each stamped with the time it was first tried;
a row's `created_at` is when the server inserted it. The faults, in turn: kill -9 of a worker, kill -9
of the web process, Postgres stopped (`-m fast`) and started again, Postgres slowed (+50 ms each way),
Valkey killed (kill -9) and started again on its append-only file, the export service hanging (longer
than TASK_TIMEOUT, so the exports time out and are retried), kill -9 of the whole instance (the
supervisor's process group) and a new server started.

    .venv/bin/python -m benchmarks.soak --events 1000000 --minutes 15 [--fault-every 60] [--plot soak.png]
        [--faults worker,hang,...] [--env NAME=VALUE] [--keep-logs FOLDER]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from tests.e2e.plugin_stack import write_plugin
from tests.e2e.server import RunningServer, running_server
from tests.faults.harness import Load, RssWatch, Tally, capture_sender, rss_mb, safely, tally
from tests.faults.plugin_service import EXPORTER, HangingService
from tests.faults.services import TEAM_ID, PrivatePostgres, PrivateValkey, postgres_address
from tests.kafka_broker import free_port
from tests.loopback import LoopbackService
from tests.tcp_proxy import TcpProxy

from benchmarks.machine import machine
from benchmarks.services import PLUGINS
from plugin_server.plugins.admin import enable_plugin, install_plugin
from plugin_server.plugins.export import EXPORT_RETRY_JOB

PLUGIN_FOLDERS = ("js-benchmark", "python-benchmark")
OUTAGE = 5.0  # seconds Postgres or Valkey stays down
SLOWED = 15.0  # seconds Postgres stays slowed
SLOW_BY = 0.05  # seconds added to every packet, each way
HANG = 20.0  # seconds the exporting plugin's service hangs
EXPORTS_LATE = 300.0  # seconds the retried exports may still take once every event is stored
TASK_TIMEOUT = 10.0  # seconds a plugin call may run: the exports time out while the service hangs
LATENCY = """
SELECT percentile_disc(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY latency), max(latency)
FROM (SELECT extract(epoch FROM created_at) - (properties->>'send_time')::float8 AS latency
      FROM posthog_event WHERE team_id = %s) AS stored
"""
LATENCY_OVER_TIME = """
SELECT floor(((properties->>'send_time')::float8 - %s) / 10) * 10 AS sent,
       percentile_disc(ARRAY[0.5, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM created_at) - (properties->>'send_time')::float8)
FROM posthog_event WHERE team_id = %s GROUP BY 1 ORDER BY 1
"""
EXPORT_JOBS = """
SELECT CASE WHEN status = 'failed' THEN 'failed' ELSE 'waiting' END, COUNT(*),
       COALESCE(SUM(jsonb_array_length(payload->'batch')), 0)
FROM plugin_server_jobs WHERE type = %s GROUP BY 1
"""
BOTH_PLUGINS_RAN = """
SELECT COUNT(*) FROM posthog_event
WHERE team_id = %s AND properties->>'upperUuid' = upper(uuid::text) AND properties->>'processed' = 'hell yes'
"""


@dataclass
class Stack:
    """The server under test and what the faults act on."""

    server: RunningServer  # the running one: a whole-instance kill replaces it
    postgres: PrivatePostgres
    valkey: PrivateValkey
    proxy: TcpProxy
    service: HangingService  # what the exporting plugin sends each event's number to
    start_server: Callable[[], RunningServer]  # another server, on the same web port and settings


def kill_a_worker(stack: Stack) -> None:
    os.kill(stack.server.worker_pids()[0], signal.SIGKILL)


def kill_the_web_process(stack: Stack) -> None:
    os.kill(stack.server.web_pid(), signal.SIGKILL)
    time.sleep(0.5)
    stack.server.wait_for_web()


def kill_the_instance(stack: Stack) -> None:
    """kill -9 of the supervisor and all its children at once (its process group), then the server
    started again, as a service manager would."""
    os.killpg(stack.server.process.pid, signal.SIGKILL)
    stack.server.process.wait(10)
    stack.server = stack.start_server()


def stop_postgres(stack: Stack) -> None:
    stack.postgres.stop("fast")
    time.sleep(OUTAGE)
    stack.postgres.start()


def slow_postgres(stack: Stack) -> None:
    with stack.proxy.slowed(SLOW_BY):
        time.sleep(SLOWED)


def kill_valkey(stack: Stack) -> None:
    stack.valkey.kill()
    time.sleep(OUTAGE)
    stack.valkey.start()


def hang_the_plugins_service(stack: Stack) -> None:
    stack.service.up.clear()
    time.sleep(HANG)
    stack.service.up.set()


FAULTS: dict[str, tuple[str, Callable[[Stack], None]]] = {
    "worker": ("kill -9 worker", kill_a_worker),
    "web": ("kill -9 web", kill_the_web_process),
    "postgres": ("Postgres stop -m fast, 5 s", stop_postgres),
    "slow": ("Postgres +50 ms, 15 s", slow_postgres),
    "valkey": ("Valkey kill -9, 5 s", kill_valkey),
    "hang": ("plugin's service hangs, 20 s", hang_the_plugins_service),
    "instance": ("kill -9 instance, restart", kill_the_instance),
}


class RssTimeline(RssWatch):
    """The resident memory of the supervisor, the web process and each worker slot (a worker started
    again after a kill takes the slot of the one it replaces), with the load average, over time."""

    def __init__(self, stack: Stack, interval: float = 2.0) -> None:
        super().__init__(lambda: stack.server.worker_pids(), interval)
        self._stack = stack
        self._slots: dict[int, str] = {}
        self.start = time.monotonic()
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.lives: dict[int, tuple[str, list[float], list[float]]] = {}  # pid: role, seconds, MB
        self.load_averages: list[float] = []

    def sample(self) -> None:
        server = self._stack.server
        workers = safely(server.worker_pids, None)
        web = safely(server.web_pid, None)
        roles = {"supervisor": server.process.pid}
        if web is not None:
            roles["web"] = web
        if workers is not None:
            roles.update((self._slot(pid, workers), pid) for pid in workers)
        at = time.monotonic() - self.start
        memory = {}
        for role, pid in roles.items():
            if (mb := rss_mb(pid)) > 0:
                memory[role] = mb
                life = self.lives.setdefault(pid, (role, [], []))
                life[1].append(at)
                life[2].append(mb)
        self.samples.append((at, memory))
        self.load_averages.append(os.getloadavg()[0])

    def _slot(self, pid: int, alive: list[int]) -> str:
        if pid not in self._slots:
            taken = {slot for each, slot in self._slots.items() if each in alive}
            self._slots[pid] = next(f"worker {i}" for i in range(1, 100) if f"worker {i}" not in taken)
        return self._slots[pid]

    def series(self) -> dict[str, tuple[list[float], list[float]]]:
        """Per role: (seconds since start, MB)."""
        lines: dict[str, tuple[list[float], list[float]]] = {}
        for at, memory in self.samples:
            for role, mb in memory.items():
                times, values = lines.setdefault(role, ([], []))
                times.append(at)
                values.append(mb)
        return dict(sorted(lines.items()))


@dataclass
class Flatness:
    """RSS after warm-up: mean of its first and last third, and the least-squares slope."""

    first_third_mb: float
    last_third_mb: float
    slope_mb_per_min: float

    def __str__(self) -> str:
        return (
            f"first third {self.first_third_mb:.0f} MB, last third {self.last_third_mb:.0f} MB, "
            f"slope {self.slope_mb_per_min:+.2f} MB/min"
        )


def flatness(times: list[float], values: list[float], warm_up: float) -> Flatness | None:
    kept = [(at, mb) for at, mb in zip(times, values, strict=True) if at >= warm_up]
    if len(kept) < 6:
        return None
    third = len(kept) // 3
    slope, _ = statistics.linear_regression([at / 60 for at, _ in kept], [mb for _, mb in kept])
    return Flatness(
        statistics.fmean(mb for _, mb in kept[:third]), statistics.fmean(mb for _, mb in kept[-third:]), slope
    )


@dataclass
class Result:
    sent: int
    tally: Tally
    plugins_ran: int
    p50: float
    p99: float
    slowest: float
    retries: int
    seconds: float
    exported: int  # events delivered by the exporting plugin (distinct)
    exports_hung: int  # export requests that hung
    not_exported: list[int]  # the numbers of the events never exported
    export_jobs: dict[str, tuple[int, int]]  # export jobs left at the end, waiting or failed: (jobs, events)
    faults: list[tuple[float, str]] = field(default_factory=list)
    latency_over_time: list[tuple[float, float, float]] = field(default_factory=list)


@contextlib.contextmanager
def running_stack(folder: Path, workers: int, extra_env: dict[str, str]) -> Iterator[Stack]:
    """A private Postgres and Valkey, and the server, with three plugins for team 2: both benchmark
    plugins and one exporting every event's number to a service on loopback."""
    postgres = PrivatePostgres(folder / "pgdata")
    valkey = PrivateValkey(folder / "valkey")
    service = HangingService()
    try:
        with LoopbackService(service.answer) as loopback, TcpProxy(postgres_address(postgres.url)) as proxy:
            with psycopg.connect(postgres.url, autocommit=True) as connection:
                plugins = [install_plugin(connection, PLUGINS / name) for name in PLUGIN_FOLDERS]
                plugins.append(
                    install_plugin(connection, write_plugin(folder, "exporter", EXPORTER, "index.js"))
                )
                configs = [{}, {}, {"url": loopback.url, "exportEventsBufferSeconds": "1"}]
                for order, (plugin, config) in enumerate(zip(plugins, configs, strict=True)):
                    enable_plugin(connection, plugin, TEAM_ID, config, order=order)
            env = {
                "DATABASE_URL": psycopg.conninfo.make_conninfo(
                    postgres.url, host="127.0.0.1", port=proxy.port
                ),
                "REDIS_URL": valkey.url,
                "WORKER_CONCURRENCY": str(workers),
                "TASK_TIMEOUT": str(TASK_TIMEOUT),
                "PLUGIN_HTTP_ALLOW_PRIVATE_NETWORKS": "true",  # the service is on loopback
                "WEB_PORT": str(free_port()),  # the same after a restart: the load keeps its address
                **extra_env,
            }
            with contextlib.ExitStack() as servers:

                def start_server() -> RunningServer:
                    server = servers.enter_context(running_server(folder, env, process_group=True))
                    server.wait_for_log("All systems go")
                    server.wait_for_web()
                    return server

                yield Stack(start_server(), postgres, valkey, proxy, service, start_server)
    finally:
        valkey.close()
        postgres.close()


def soak(
    stack: Stack,
    events: int,
    minutes: float,
    fault_every: float,
    batch: int,
    started: float,
    faults_in_turn: list[str],
) -> Result:
    """Send `events` over `minutes`, a fault every `fault_every` seconds (those named, in turn); then
    count and measure. Times are in seconds since `started` (a time.monotonic())."""
    token = stack.postgres.team.api_token
    sender = capture_sender(stack.server.web_url, token, batch)  # the same port after a restart
    requests = events // batch
    faults: list[tuple[float, str]] = []
    wall_start = time.time() - (time.monotonic() - started)
    with Load(sender, rate=requests / (minutes * 60), limit=requests) as load:
        for number in range(sys.maxsize):
            if load.wait(max(0.0, started + fault_every * (number + 1) - time.monotonic())):
                break
            if not faults_in_turn:  # `--faults ''`: a steady stream only, for memory and latency
                continue
            name, fault = FAULTS[faults_in_turn[number % len(faults_in_turn)]]
            faults.append((time.monotonic() - started, name))
            fault(stack)
            print(f"{faults[-1][0]:6.0f} s  {name:28}  sent {load.sent * batch:>9,}", flush=True)
        sent = load.stop() * batch
    counted = tally(stack.postgres.url, TEAM_ID, sent, timeout=900)
    seconds = time.monotonic() - started
    exported = _exported(stack, sent, timeout=EXPORTS_LATE)
    export_jobs = _export_jobs(stack.postgres.url)
    with psycopg.connect(stack.postgres.url, autocommit=True) as connection:
        row = connection.execute(LATENCY, (TEAM_ID,)).fetchone()
        ran = connection.execute(BOTH_PLUGINS_RAN, (TEAM_ID,)).fetchone()
        rows = connection.execute(LATENCY_OVER_TIME, (wall_start, TEAM_ID)).fetchall()
    assert row is not None and ran is not None
    (p50, p99), slowest = row
    over_time = [(at, p50, p99) for at, (p50, p99) in rows]
    hung = stack.service.hung
    not_exported = sorted(set(range(sent)) - stack.service.delivered)
    return Result(
        sent,
        counted,
        ran[0],
        p50,
        p99,
        slowest,
        load.retries,
        seconds,
        exported,
        hung,
        not_exported,
        export_jobs,
        faults,
        over_time,
    )


def _exported(stack: Stack, sent: int, timeout: float) -> int:
    """How many of the events sent the service received: once it has them all, or once no export job
    waits or runs and the service received nothing new for 10 s, or after `timeout` seconds."""
    service = stack.service
    deadline = time.monotonic() + timeout
    seen, changed = -1, time.monotonic()
    while len(service.delivered) < sent and time.monotonic() < deadline:
        if len(service.delivered) != seen:
            seen, changed = len(service.delivered), time.monotonic()
        elif time.monotonic() - changed > 10 and not _export_jobs(stack.postgres.url).get("waiting"):
            break
        time.sleep(0.5)
    return len(service.delivered & set(range(sent)))


def _export_jobs(database_url: str) -> dict[str, tuple[int, int]]:
    """The export jobs (held and retried) in the job queue by status: (jobs, events)."""
    with contextlib.suppress(psycopg.OperationalError), psycopg.connect(database_url) as connection:
        rows = connection.execute(EXPORT_JOBS, (EXPORT_RETRY_JOB,)).fetchall()
        return {status: (jobs, events) for status, jobs, events in rows}
    return {"waiting": (0, 0)}  # not known: wait on


def _ranges(numbers: list[int]) -> str:
    """Sorted numbers as runs, "3-7, 12" (the first 20 runs): where in the stream they fall."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and runs[-1][1] == number - 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    shown = ", ".join(f"{low}-{high}" if high > low else str(low) for low, high in runs[:20])
    return shown + (f" and {len(runs) - 20} more runs" if len(runs) > 20 else "")


def print_lives(lives: dict[int, tuple[str, list[float], list[float]]], warm_up: float) -> None:
    """RSS flatness of each process that lived `warm_up` + 3 minutes, after its own warm-up (a
    worker's slot mixes the lives of the workers that held it)."""
    print(f"each process that lived {warm_up / 60 + 3:g} min or more, after its first {warm_up:.0f} s:")
    for pid, (role, times, values) in lives.items():
        if times[-1] - times[0] >= warm_up + 180:
            started = times[0]
            kept = flatness([at - started for at in times], values, warm_up)
            print(
                f"  {role:10} pid {pid:>7}  {started / 60:4.1f}-{times[-1] / 60:4.1f} min  "
                f"max {max(values):.0f} MB  {kept}"
            )


def plot(path: Path, timeline: RssTimeline, result: Result, warm_up: float, fault_every: float) -> None:
    """RSS per process over time, with the faults marked, above latency per 10 s of sending."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (memory, latency) = pyplot.subplots(2, 1, sharex=True, figsize=(10, 7), height_ratios=(3, 2))
    for role, (times, values) in timeline.series().items():
        memory.plot([at / 60 for at in times], values, label=role, linewidth=1)
    for at, name in result.faults:
        for axes in (memory, latency):
            axes.axvline(at / 60, color="grey", linestyle=":", linewidth=0.8)
        memory.annotate(
            name,
            (at / 60, 1),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=6,
            va="top",
            ha="right",
            color="grey",
        )
    memory.axvspan(0, warm_up / 60, color="grey", alpha=0.1, label="warm-up")
    memory.set_ylabel("RSS (MB)")
    memory.set_ylim(bottom=0)
    memory.legend(loc="lower right", fontsize=7, ncol=3)
    memory.set_title(
        f"soak: {result.sent:,} events, a fault every {fault_every:g} s, lost {result.tally.lost}, doubled {result.tally.doubled}",
        fontsize=10,
    )
    sent = [at / 60 for at, _, _ in result.latency_over_time]
    latency.plot(sent, [p50 for _, p50, _ in result.latency_over_time], label="p50", linewidth=1)
    latency.plot(sent, [p99 for _, _, p99 in result.latency_over_time], label="p99", linewidth=1)
    latency.set_yscale("log")
    latency.set_ylabel("capture to row (s), per 10 s sent")
    latency.set_xlabel("minutes")
    latency.legend(loc="upper right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--fault-every", type=float, default=60, help="seconds between faults")
    parser.add_argument("--batch", type=int, default=50, help="events per capture request")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=Path("soak.png"))
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"the faults to take in turn, comma-separated, of: {', '.join(FAULTS)} ('' for none)",
    )
    parser.add_argument("--keep-logs", type=Path, help="a folder to copy the server's logs to")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the server (repeatable)",
    )
    options = parser.parse_args()
    faults_in_turn = [name.strip() for name in options.faults.split(",") if name.strip()]
    if unknown := set(faults_in_turn) - set(FAULTS):
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    extra_env = dict(setting.partition("=")[::2] for setting in options.env)
    warm_up = min(120.0, options.minutes * 60 / 4)
    with tempfile.TemporaryDirectory(prefix="plugin-server-soak-") as folder:
        os.chmod(folder, 0o755)  # the embedded Postgres runs as an unprivileged user when we are root
        with (
            running_stack(Path(folder), options.workers, extra_env) as stack,
            RssTimeline(stack) as timeline,
        ):
            result = soak(
                stack,
                options.events,
                options.minutes,
                options.fault_every,
                options.batch,
                timeline.start,
                faults_in_turn,
            )
        if options.keep_logs is not None:
            options.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in Path(folder).glob("server-*.log"):
                shutil.copy(log, options.keep_logs)
    plot(options.plot, timeline, result, warm_up, options.fault_every)
    print(
        f"soak: {result.sent:,} events sent in {options.minutes:g} min ({options.batch} per request), "
        f"{len(result.faults)} faults, all stored after {result.seconds / 60:.1f} min, "
        f"{machine()}"
    )
    print(
        f"lost {result.tally.lost}, doubled {result.tally.doubled}, both plugins' changes on {result.plugins_ran:,} rows, "
        f"{result.retries} requests sent again"
    )
    print(
        f"exported by the plugin: {result.exported:,} of {result.sent:,}; {result.exports_hung} export requests hung"
    )
    if result.not_exported:
        print(f"not exported (event numbers): {_ranges(result.not_exported)}")
    for status, (jobs, events) in result.export_jobs.items():
        print(f"export jobs left {status}: {jobs} ({events:,} events)")
    print(f"capture -> row: p50 {result.p50:.2f} s, p99 {result.p99:.2f} s, max {result.slowest:.1f} s")
    loads = timeline.load_averages
    print(f"load average (1 min) during the run: mean {statistics.fmean(loads):.1f}, max {max(loads):.1f}")
    for role, (times, values) in timeline.series().items():
        print(f"RSS {role:10} after {warm_up:.0f} s of warm-up: {flatness(times, values, warm_up)}")
    print_lives(timeline.lives, warm_up)
    print(f"plot: {options.plot}")
    if (result.tally.lost, result.tally.doubled) != (
        0,
        0,
    ) or result.plugins_ran != result.sent:
        sys.exit(1)


if __name__ == "__main__":
    main()
