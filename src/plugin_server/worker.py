"""One worker process: claims micro-batches from its source, runs the pipeline, acknowledges.

A message leaves its source (the Celery list on Redis, or the Kafka topic) only when its batch is
acknowledged, after its events are stored or it was recorded as a dead letter. Up to TASKS_PER_WORKER
batches are in flight at once, and the next one is claimed while they are; their person steps run in
claim order. A batch that fails on a database outage is retried as it is; a batch that fails for any
other reason is split into single messages, and a message that fails alone becomes a dead letter with
the error, so one bad event never stops the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import redis.asyncio as aioredis

from plugin_server.actions.setup import open_actions
from plugin_server.config import Settings, load_settings
from plugin_server.db.postgres import open_pool
from plugin_server.db.redis import open_redis
from plugin_server.ingestion.batches import (
    TRANSIENT_ERRORS,
    Lanes,
    LateWork,
    process_until_done,
    until_available,
)
from plugin_server.ingestion.definitions import DefinitionsManager
from plugin_server.ingestion.groups import GroupTypeManager
from plugin_server.ingestion.ordering import Turn, Turnstile
from plugin_server.ingestion.person_outbox import resend_forever
from plugin_server.ingestion.persons import PersonManager
from plugin_server.ingestion.pipeline import BatchOutcome, EventPipeline, message_context
from plugin_server.jobs.queue import JobQueue
from plugin_server.jobs.scheduler import Scheduler
from plugin_server.plugins.metrics_report import PluginMetricsReporter
from plugin_server.plugins.run import PluginRunner
from plugin_server.plugins.services import WorkerPlugins
from plugin_server.plugins.tracking import CallTracker, SharedCallState
from plugin_server.process_signals import obey_only_the_supervisor
from plugin_server.services.gc_tuning import tune_garbage_collector
from plugin_server.services.geoip import load_geoip
from plugin_server.services.malloc_tuning import give_back_free_memory_forever, limit_arenas
from plugin_server.services.metrics import get_metrics
from plugin_server.services.observability import setup_process
from plugin_server.sources import Source
from plugin_server.topology import (
    open_plugin_services,
    open_plugins,
    open_producer,
    open_sinks,
    open_sources,
)

log = logging.getLogger(__name__)

CLAIM_BLOCK_SECONDS = 1.0
STATS_INTERVAL_SECONDS = 10.0
GAUGE_INTERVAL_SECONDS = 5.0


class WorkerStats:
    """Counters a worker logs every few seconds; also what the supervisor reads to detect a stall."""

    def __init__(
        self, last_activity: Synchronized[float] | None, kafka_lag: Synchronized[int] | None = None
    ) -> None:
        self.ingested = 0
        self.dropped = 0
        self.dead_letters = 0
        self._last_activity = last_activity
        self._kafka_lag = kafka_lag  # for /_ready, through the supervisor; -1 until sampled

    def record(self, outcome: BatchOutcome) -> None:
        self.ingested += outcome.stored
        self.dropped += outcome.dropped
        self.dead_letters += len(outcome.dead_letters)
        self.touch()

    def touch(self) -> None:
        """Mark the worker as making progress: it finished a batch or is free to take the next one."""
        if self._last_activity is not None:
            self._last_activity.value = time.time()

    def lag_sampled(self, lag: int) -> None:
        if self._kafka_lag is not None:
            self._kafka_lag.value = lag


class Worker:
    def __init__(
        self,
        settings: Settings,
        consumer_id: str,
        stats: WorkerStats,
        *,
        index: int = 0,
        tracker: CallTracker,
    ) -> None:
        self.settings = settings
        self.consumer_id = consumer_id
        self.stats = stats
        self.index = index
        self.tracker = tracker
        self._stopping = asyncio.Event()
        self._turnstile = Turnstile()
        self._in_flight: set[asyncio.Task[None]] = set()
        # Shares of batches set aside for slow plugins and not done yet, and their events; at
        # SLOW_PLUGIN_BACKLOG shares or TASKS_PER_WORKER x INGESTION_BATCH_SIZE events, no claims.
        self._aside = 0
        self._aside_events = 0
        self._room_aside = asyncio.Event()
        self._room_aside.set()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        settings = self.settings
        assert settings.database_url and settings.redis_url, "the supervisor resolves both URLs"
        async with contextlib.AsyncExitStack() as stack:
            pool = await open_pool(settings.database_url, min_size=1, max_size=8)
            stack.push_async_callback(pool.close)
            redis_client = await open_redis(
                settings.redis_url,
                min_size=settings.REDIS_POOL_MIN_SIZE,
                max_size=settings.REDIS_POOL_MAX_SIZE,
            )
            stack.push_async_callback(redis_client.aclose)
            geoip = await load_geoip(pool, file_path=settings.MMDB_FILE_PATH, disabled=settings.DISABLE_MMDB)
            # One Kafka producer for ClickHouse's records, plugin logs and captured events (closed last).
            producer = await stack.enter_async_context(open_producer(settings))
            services = await stack.enter_async_context(
                open_plugin_services(
                    settings, pool, redis_client, geoip=geoip, tracker=self.tracker, producer=producer
                )
            )
            worker_plugins = await stack.enter_async_context(open_plugins(settings, services))
            await self._reload(worker_plugins)
            jobs, teams = services.jobs, services.teams
            actions = await stack.enter_async_context(
                open_actions(
                    settings,
                    pool,
                    redis_client,
                    teams,
                    jobs,
                    write_action_events=settings.EVENT_STORE == "postgres",
                )
            )
            sources = await stack.enter_async_context(
                open_sources(settings, redis_client, self.consumer_id, teams)
            )
            definitions, groups = DefinitionsManager(pool), GroupTypeManager(pool)
            sinks = await stack.enter_async_context(open_sinks(settings, pool, producer))
            persons = PersonManager(pool, lru_size=settings.DISTINCT_ID_LRU_SIZE, outbox=sinks.outbox)
            plugins = PluginRunner(
                worker_plugins.registry, services.hung, on_event_concurrency=settings.TASKS_PER_WORKER
            )
            pipelines = [
                EventPipeline(
                    teams=teams,
                    definitions=definitions,
                    groups=groups,
                    persons=persons,
                    sink=sinks.events,
                    person_sink=sinks.persons,
                    plugins=plugins,
                    jobs=jobs,
                    actions=actions.service,
                    codec=source.codec,
                )
                for source in sources
            ]
            for source in sources:
                await source.start()
            tune_garbage_collector()  # start-up is done: what is alive now lives as long as the worker
            helpers = [
                asyncio.create_task(self._housekeeping(sources)),
                asyncio.create_task(self._listen_for_reloads(redis_client, worker_plugins)),
                asyncio.create_task(self._report_plugin_metrics(worker_plugins.metrics)),
                asyncio.create_task(actions.service.store.keep_fresh(redis_client)),
                asyncio.create_task(give_back_free_memory_forever()),
            ]
            if sinks.outbox is not None:
                helpers.append(asyncio.create_task(resend_forever(sinks.outbox, pool, sinks.persons.write)))
            until_stopped = [
                asyncio.create_task(
                    jobs.run_forever(
                        worker_plugins.job_runner.run,
                        stop_event=self._stopping,
                        concurrency=settings.JOB_QUEUE_CONCURRENCY,
                    )
                ),
                asyncio.create_task(
                    jobs.run_forever(
                        actions.delivery.deliver,
                        stop_event=self._stopping,
                        concurrency=settings.HOOK_CONCURRENCY,
                        kinds=("hook",),
                    )
                ),
            ]
            if self.index == 0:  # one scheduler per server; the Redis lock makes it one per cluster
                scheduler = Scheduler(
                    redis_client, jobs, worker_plugins.scheduled_tasks, lock_ttl=settings.SCHEDULE_LOCK_TTL
                )
                until_stopped.append(asyncio.create_task(scheduler.run(self._stopping)))
                helpers.append(asyncio.create_task(self._sample_job_queue(jobs)))
            try:
                await asyncio.gather(*map(self._consume, sources, pipelines))
            finally:
                self._stopping.set()
                for task in helpers:
                    task.cancel()
                await asyncio.gather(*helpers, *until_stopped, return_exceptions=True)

    async def _reload(self, plugins: WorkerPlugins) -> None:
        await plugins.registry.reload()
        if self.index == 0:
            plugins.capabilities.discover()

    async def _listen_for_reloads(self, redis_client: aioredis.Redis, plugins: WorkerPlugins) -> None:
        """Reload the plugins when a message arrives on PLUGINS_RELOAD_PUBSUB_CHANNEL (any content)."""
        channel = self.settings.PLUGINS_RELOAD_PUBSUB_CHANNEL
        while True:
            try:
                async with redis_client.pubsub() as pubsub:
                    await pubsub.subscribe(channel)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            log.info("reloading plugins (message on %r)", channel)
                            await self._reload(plugins)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.error("plugin reload listener failed (%s); subscribing again", error)
                await asyncio.sleep(1.0)

    async def _report_plugin_metrics(self, reporter: PluginMetricsReporter) -> None:
        while True:
            await asyncio.sleep(self.settings.PLUGIN_METRICS_INTERVAL_SECONDS)
            try:
                await reporter.report()
            except Exception:
                log.exception("reporting plugin metrics failed")

    async def _sample_job_queue(self, jobs: JobQueue) -> None:
        """The job queue depth gauge (one worker samples it for the server)."""
        while True:
            try:
                get_metrics().job_queue_sampled(await jobs.queue_depth())
            except TRANSIENT_ERRORS as error:
                log.warning("cannot read the job queue depth: %s", error)
            await asyncio.sleep(GAUGE_INTERVAL_SECONDS)

    async def _consume(self, source: Source, pipeline: EventPipeline) -> None:
        """Claim a batch, then wait for one of the TASKS_PER_WORKER places in flight: the next batch is
        claimed while they are all taken, so a place that frees starts work at once rather than after
        a claim (a claim's answer waits its turn on a busy event loop: 10-110 ms for a Kafka claim)."""
        slots = asyncio.Semaphore(self.settings.TASKS_PER_WORKER)
        while not self._stopping.is_set():
            await self._room_aside.wait()
            self.stats.touch()
            try:
                batch = await source.claim(self.settings.INGESTION_BATCH_SIZE, CLAIM_BLOCK_SECONDS)
            except TRANSIENT_ERRORS as error:
                log.error("cannot read the queue: %s; retrying", error)
                await self._sleep(1.0)
                continue
            if batch is None:
                continue
            # a full pipeline: the source stops fetching ahead until a batch is done
            await (source.paused_until(slots.acquire()) if slots.locked() else slots.acquire())
            get_metrics().events_received(source.name, len(batch.messages))
            task = self._spawn(self._handle(source, pipeline, batch, self._turnstile.ticket()))
            task.add_done_callback(lambda _: slots.release())
        while self._in_flight:  # batches may still set slow teams' events aside in tasks of their own
            await asyncio.gather(*self._in_flight)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task that shutdown waits for."""
        task = asyncio.create_task(work)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return task

    async def _handle(self, source: Source, pipeline: EventPipeline, batch: Any, turn: Turn) -> None:
        lanes = None
        if source.can_split:  # else a batch waits for its slowest team (acked as a whole)
            lanes = Lanes(
                patience=self.settings.SLOW_PLUGIN_PATIENCE_MS / 1000,
                set_aside=lambda messages, work, acknowledged: self._set_aside(
                    source, batch, messages, work, acknowledged
                ),
            )
        try:
            outcome = await process_until_done(pipeline, batch.messages, turn, lanes)
            await turn.wait_to_acknowledge()
            await self._finish(source, batch, outcome)
        except Exception:
            log.exception("handling a batch failed; its messages stay unacknowledged and will be redelivered")
        finally:
            turn.acknowledged()
            await turn.finish()

    async def _set_aside(
        self,
        source: Source,
        batch: Any,
        messages: list[bytes],
        work: LateWork,
        acknowledged: Callable[[], None],
    ) -> None:
        """Give the messages of a team whose plugins are slow a queue entry of their own, acknowledged
        when `work` is done. While SLOW_PLUGIN_BACKLOG of these, or TASKS_PER_WORKER x INGESTION_BATCH_SIZE
        events in them, are held, no more events are claimed (waiting here instead could hold up, in a
        full backlog, a turn that the backlog waits for)."""
        part = await until_available(lambda: source.split_off(batch, messages))
        self._set_aside_by(1, len(messages))
        get_metrics().events_set_aside(len(messages))
        log.debug("a team's plugins are slow: %d events of a batch are stored on their own", len(messages))
        self._spawn(self._handle_late(source, part, work, len(messages), acknowledged))

    async def _handle_late(
        self, source: Source, part: Any, work: LateWork, events: int, acknowledged: Callable[[], None]
    ) -> None:
        try:
            await self._finish(source, part, await work)
        except Exception:
            log.exception("handling slow events failed; their messages stay in Redis and will be redelivered")
        finally:
            acknowledged()
            self._set_aside_by(-1, -events)

    def _set_aside_by(self, parts: int, events: int) -> None:
        self._aside += parts
        self._aside_events += events
        settings = self.settings
        full = self._aside_events >= settings.TASKS_PER_WORKER * settings.INGESTION_BATCH_SIZE
        if full or self._aside >= settings.SLOW_PLUGIN_BACKLOG:
            self._room_aside.clear()
        else:
            self._room_aside.set()

    async def _finish(self, source: Source, batch: Any, outcome: BatchOutcome) -> None:
        await until_available(lambda: source.ack(batch, outcome.dead_letters))
        self.stats.record(outcome)
        for message, reason in outcome.dead_letters:
            context = message_context(message, source.codec)
            log.warning("dead letter: %s (%d bytes)", reason, len(message), extra=context)

    async def _housekeeping(self, sources: list[Source]) -> None:
        """Heartbeat, redelivery of messages of dead consumers, and the periodic progress line."""
        interval = min(self.settings.QUEUE_VISIBILITY_TIMEOUT / 3, 5.0)
        last_stats, last_count = time.monotonic(), 0
        while True:
            await asyncio.sleep(interval)
            for source in sources:
                try:
                    lag = await source.housekeeping()
                    if lag is not None:
                        self.stats.lag_sampled(lag)
                except TRANSIENT_ERRORS as error:
                    log.error("%s source housekeeping failed: %s", source.name, error)
            now = time.monotonic()
            if now - last_stats >= STATS_INTERVAL_SECONDS and self.stats.ingested != last_count:
                log.info(
                    "processed %d events in %.0fs (totals: %d stored, %d dropped by plugins, %d dead letters)",
                    self.stats.ingested - last_count,
                    now - last_stats,
                    self.stats.ingested,
                    self.stats.dropped,
                    self.stats.dead_letters,
                )
                last_stats, last_count = now, self.stats.ingested

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


def worker_main(
    index: int,
    consumer_id: str,
    last_activity: Synchronized[float] | None = None,
    calls: SharedCallState | None = None,
    kafka_lag: Synchronized[int] | None = None,
) -> None:
    """Entry point of a worker process (started by the supervisor with the resolved URLs in its env)."""
    limit_arenas()  # before the threads start: they share the arenas made from now on
    settings = load_settings()
    setup_process(settings, f"worker-{index}")
    obey_only_the_supervisor()
    import uvloop

    async def main() -> None:
        worker = Worker(
            settings,
            consumer_id,
            WorkerStats(last_activity, kafka_lag),
            index=index,
            tracker=CallTracker(calls),
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run()

    try:
        uvloop.run(main())
    except Exception:  # multiprocessing would print it past the logs (and Sentry)
        log.exception("worker %d crashed", index)
        raise
    log.info("worker stopped")
