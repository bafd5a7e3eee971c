"""The main process: resolves services, migrates, starts and watches the worker processes.

It runs no plugin code and touches no events. It keeps WORKER_CONCURRENCY workers alive (a worker
that dies is started again under the same consumer id, which hands its unacknowledged messages back
to the queue), writes the health keys the original wrote, restarts a worker that stalls while events
wait (STALENESS_RESTART_SECONDS), and on SIGTERM/SIGINT lets every worker drain before it exits.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.context import SpawnProcess
from multiprocessing.sharedctypes import Synchronized
from types import FrameType

import psycopg
import redis

from plugin_server import __version__
from plugin_server.config import Settings
from plugin_server.db.migrate import migrate
from plugin_server.db.teams import count_teams, create_organization_and_team
from plugin_server.ingestion.pipeline import message_age_seconds
from plugin_server.plugins.runtime_py import remove_stale_plugin_files
from plugin_server.plugins.tracking import HUNG_MARK_TTL_SECONDS, SharedCallState, hung_key
from plugin_server.services.embedded import EmbeddedServices, remember_data_dir, start_embedded
from plugin_server.services.instance_dir import pid_alive
from plugin_server.services.metrics import (
    configure_metrics,
    get_metrics,
    process_exited,
    remove_multiprocess_dir,
    use_multiprocess_dir,
)
from plugin_server.services.sentry import init_sentry
from plugin_server.web.health import WorkerStatus
from plugin_server.web.processes import WebProcesses
from plugin_server.web.server import port_taken
from plugin_server.worker import worker_main

log = logging.getLogger(__name__)

PING_KEY = "@posthog-plugin-server/ping"
VERSION_KEY = "@posthog-plugin-server/version"
PING_INTERVAL_SECONDS = 5.0
IDLE_LOG_INTERVAL_SECONDS = 30.0
DRAIN_TIMEOUT_SECONDS = 30.0
READY_MESSAGE = "🚀 All systems go"
RUNAWAY_GRACE_SECONDS = 1.0
# A worker that marked no progress for this long (or 2 x TASK_TIMEOUT) is not consuming, for /_ready.
CONSUMING_SILENCE_SECONDS = 60.0


@dataclass
class _WorkerSlot:
    index: int
    consumer_id: str
    last_activity: Synchronized[float]
    calls: SharedCallState
    kafka_lag: Synchronized[int]  # this worker's, as it last sampled it; -1 until then
    process: SpawnProcess | None = None
    restarts: int = 0
    started_at: float = 0.0


@dataclass
class Supervisor:
    settings: Settings
    _stop_requested: bool = False
    _signals: int = 0
    _slots: list[_WorkerSlot] = field(default_factory=list)
    _embedded: EmbeddedServices | None = None
    _web: WebProcesses | None = None
    _worker_status: WorkerStatus | None = None

    def run(self) -> int:
        self._install_signal_handlers()
        if self.settings.PLUGIN_SERVER_IDLE:
            return self._idle()
        if not self.settings.DISABLE_WEB:
            problem = port_taken(self.settings.WEB_HOSTNAME, self.settings.WEB_PORT)
            if problem:
                log.error(problem)
                return 1
        init_sentry(self.settings, "main")
        metrics_dir = use_multiprocess_dir(self.settings)  # before any child starts
        configure_metrics(self.settings)
        try:
            database_url, redis_url = self._resolve_services()
            if self.settings.AUTO_MIGRATE:
                applied = migrate(database_url)
                if applied:
                    log.info(
                        "applied migrations: %s", ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
                    )
            if self._embedded is not None:
                self._ensure_a_team(database_url)
            if self._stop_requested:
                return 0
            redis_client = redis.Redis.from_url(redis_url)
            self._forget_dead_local_consumers(redis_client)
            self._start_workers()
            if not self.settings.DISABLE_WEB:
                self._start_web()
            log.info(
                "%s: %d workers consuming %r",
                READY_MESSAGE,
                len(self._slots),
                self.settings.PLUGINS_CELERY_QUEUE,
            )
            self._watch(redis_client)
            return 0
        finally:
            self._stop_web()
            self._stop_workers()
            if self._embedded is not None:
                self._embedded.stop()
            remove_multiprocess_dir(metrics_dir)

    # --- startup

    def _resolve_services(self) -> tuple[str, str]:
        """Use DATABASE_URL / REDIS_URL, or start the embedded servers for whichever is unset."""
        database_url, redis_url = self.settings.database_url, self.settings.redis_url
        if database_url is None or redis_url is None:
            log.info(
                "starting embedded %s under %s",
                _missing(database_url, redis_url),
                self.settings.PLUGIN_SERVER_DATA_DIR,
            )
            self._embedded = start_embedded(
                self.settings.PLUGIN_SERVER_DATA_DIR, postgres=database_url is None, redis=redis_url is None
            )
            remember_data_dir(self.settings.PLUGIN_SERVER_DATA_DIR)
            database_url = database_url or self._embedded.database_url
            redis_url = redis_url or self._embedded.redis_url
        assert database_url and redis_url
        # Workers are separate processes: they read the resolved URLs from their environment.
        os.environ["DATABASE_URL"] = database_url
        os.environ["REDIS_URL"] = redis_url
        os.environ.pop("POSTHOG_REDIS_HOST", None)
        return database_url, redis_url

    def _ensure_a_team(self, database_url: str) -> None:
        with psycopg.connect(database_url, autocommit=True) as connection:
            if count_teams(connection):
                return
            team = create_organization_and_team(connection)
        print(
            f"Created an organization and a team for you.\n  team id:   {team.team_id}\n"
            f"  api token: {team.api_token}\n",
            flush=True,
        )

    def _forget_dead_local_consumers(self, client: redis.Redis) -> None:
        """Expire the heartbeats of consumers of an earlier server on this host that is gone (killed),
        so their unacknowledged messages are redelivered now instead of after the visibility timeout."""
        key = f"{self.settings.PLUGINS_CELERY_QUEUE}:consumers"
        host = socket.gethostname()
        members: list[bytes] = client.zrange(key, 0, -1)  # type: ignore[assignment]
        for member in members:
            parts = member.decode().split(":")
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not pid_alive(int(parts[1])):
                client.zadd(key, {member: 0})

    # --- workers

    def _start_workers(self) -> None:
        context = multiprocessing.get_context("spawn")
        prefix = f"{socket.gethostname()}:{os.getpid()}"
        for index in range(self.settings.worker_count):
            slot = _WorkerSlot(
                index,
                f"{prefix}:{index}",
                context.Value("d", time.time()),
                SharedCallState(),
                context.Value("q", -1),
            )
            self._slots.append(slot)
            self._spawn(slot)

    def _spawn(self, slot: _WorkerSlot) -> None:
        context = multiprocessing.get_context("spawn")
        remove_stale_plugin_files()  # those of the worker being replaced, if it was killed
        if slot.process is not None and slot.process.pid is not None:
            process_exited(slot.process.pid)
        slot.last_activity.value = slot.started_at = time.time()
        slot.calls.started_at.value = 0.0
        slot.kafka_lag.value = -1
        slot.process = context.Process(
            target=worker_main,
            args=(slot.index, slot.consumer_id, slot.last_activity, slot.calls, slot.kafka_lag),
            name=f"worker-{slot.index}",
        )
        slot.process.start()

    def _watch(self, client: redis.Redis) -> None:
        next_ping = 0.0
        while not self._stop_requested:
            now = time.monotonic()
            if now >= next_ping:
                self._ping(client)
                self._sample_queue(client)
                next_ping = now + PING_INTERVAL_SECONDS
            for slot in self._slots:
                if slot.process is not None and not slot.process.is_alive():
                    log.error(
                        "worker %d exited with code %s; starting it again (restart %d)",
                        slot.index,
                        slot.process.exitcode,
                        slot.restarts + 1,
                    )
                    self._replace(slot, "exited")
            self._stop_runaway_plugins(client)
            self._restart_stalled(client)
            self._publish_worker_status()
            if self._web is not None:
                self._web.keep_running()
            time.sleep(0.2)

    def _stop_runaway_plugins(self, client: redis.Redis) -> None:
        """Replace a worker whose plugin code has held its event loop past TASK_TIMEOUT.

        The (plugin config, event) it was stuck on is remembered in Redis first, so that the new
        worker, which gets the same batch again, skips that plugin for that event."""
        limit = self.settings.TASK_TIMEOUT + RUNAWAY_GRACE_SECONDS
        for slot in self._slots:
            if slot.process is None or slot.calls.running_for() <= limit:
                continue
            current = slot.calls.current()
            if current is not None:
                config_id, label = current
                try:
                    with client.pipeline() as pipe:
                        pipe.sadd(hung_key(config_id), label)
                        pipe.expire(hung_key(config_id), HUNG_MARK_TTL_SECONDS)
                        pipe.execute()
                except redis.RedisError as error:
                    log.error("cannot remember the runaway plugin call: %s", error)
            log.error(
                "worker %d: plugin config %s ran for more than %.0fs on %r without yielding; replacing the worker",
                slot.index,
                current[0] if current else "?",
                self.settings.TASK_TIMEOUT,
                current[1] if current else "?",
            )
            self._replace(slot, "runaway")

    def _restart_stalled(self, client: redis.Redis) -> None:
        limit = self.settings.STALENESS_RESTART_SECONDS
        if not limit:
            return
        stalled = [slot for slot in self._slots if time.time() - slot.last_activity.value > limit]
        if not stalled or not _safe_llen(client, self.settings.PLUGINS_CELERY_QUEUE):
            return
        for slot in stalled:
            log.error(
                "worker %d ingested nothing for %.0fs while events wait; restarting it", slot.index, limit
            )
            self._replace(slot, "stalled")

    def _replace(self, slot: _WorkerSlot, reason: str) -> None:
        """Kill the slot's worker if it still runs, and start a new one."""
        if slot.process is not None and slot.process.is_alive():
            slot.process.kill()
            slot.process.join(5)
        slot.restarts += 1
        get_metrics().worker_restarted(reason)
        self._spawn(slot)

    # --- web

    def _start_web(self) -> None:
        self._worker_status = WorkerStatus()
        self._publish_worker_status()
        self._web = WebProcesses(self.settings.WEB_CONCURRENCY, self._worker_status)
        self._web.start()

    def _publish_worker_status(self) -> None:
        if self._worker_status is None:
            return
        now = time.time()
        silence = max(CONSUMING_SILENCE_SECONDS, 2 * self.settings.TASK_TIMEOUT)
        alive = [slot for slot in self._slots if slot.process is not None and slot.process.is_alive()]
        consuming = [
            slot
            for slot in alive
            if slot.last_activity.value > slot.started_at and now - slot.last_activity.value < silence
        ]
        lags = [slot.kafka_lag.value for slot in alive if slot.kafka_lag.value >= 0]
        self._worker_status.publish(
            expected=len(self._slots),
            alive=len(alive),
            consuming=len(consuming),
            kafka_lag=sum(lags) if lags else -1,
        )

    def _stop_web(self) -> None:
        """Stop taking events first, so that what was accepted is in the queue before workers drain."""
        if self._web is not None:
            self._web.stop(DRAIN_TIMEOUT_SECONDS)

    def _sample_queue(self, client: redis.Redis) -> None:
        """Queue depth, and lag: the age of the oldest waiting event (the right end), from its `now`."""
        queue = self.settings.PLUGINS_CELERY_QUEUE
        try:
            with client.pipeline(transaction=False) as pipe:
                pipe.llen(queue)
                pipe.lindex(queue, -1)
                depth, oldest = pipe.execute()
        except redis.RedisError as error:
            log.error("cannot sample the queue depth: %s", error)
            return
        get_metrics().queue_sampled(queue, int(depth), message_age_seconds(oldest))
        if self._worker_status is not None:
            self._worker_status.queue_sampled(int(depth))

    def _ping(self, client: redis.Redis) -> None:
        try:
            with client.pipeline() as pipe:
                pipe.set(PING_KEY, datetime.now(UTC).isoformat().replace("+00:00", "Z"), ex=60)
                pipe.set(VERSION_KEY, __version__)
                pipe.execute()
        except redis.RedisError as error:
            log.error("cannot write the health keys: %s", error)

    def _stop_workers(self) -> None:
        for slot in self._slots:
            if slot.process is not None and slot.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid or 0, signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        for slot in self._slots:
            if slot.process is None:
                continue
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                log.error(
                    "worker %d did not drain in time; killing it (its messages will be redelivered)",
                    slot.index,
                )
                slot.process.kill()
                slot.process.join()

    # --- signals and idle mode

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("received %s: draining workers and stopping", signal.Signals(signum).name)
            self._stop_requested = True
        else:
            log.warning("received %s again: stopping workers now", signal.Signals(signum).name)
            for slot in self._slots:
                if slot.process is not None and slot.process.is_alive():
                    slot.process.kill()

    def _idle(self) -> int:
        log.info("PLUGIN_SERVER_IDLE is set: the plugin server is disengaged and connects to nothing")
        while not self._stop_requested:
            deadline = time.monotonic() + IDLE_LOG_INTERVAL_SECONDS
            while not self._stop_requested and time.monotonic() < deadline:
                time.sleep(0.2)
            if not self._stop_requested:
                log.info("plugin server still disengaged (PLUGIN_SERVER_IDLE)")
        return 0


def _missing(database_url: str | None, redis_url: str | None) -> str:
    return " and ".join(
        name for name, url in (("Postgres", database_url), ("Valkey", redis_url)) if url is None
    )


def _safe_llen(client: redis.Redis, key: str) -> int:
    try:
        return int(client.llen(key))
    except redis.RedisError:
        return 0
