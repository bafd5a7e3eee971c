"""Getting a micro-batch through the pipeline whatever happens, without running plugins twice.

The batch is decoded, then each team's events go through their plugins (processEvent) at the same
time, so that one team's slow plugin holds up nobody else's: the teams whose plugins are done within
`Lanes.patience` are ingested together; each team still running then is set aside (`Lanes.set_aside`,
which gives its messages a queue entry of their own) and ingested on its own once its plugins are done.
Person order is kept per team (ordering.py): later batches of a team set aside wait for it, and are set
aside in their turn, while other teams go on.

A step that fails because the database or Redis is unavailable is retried with a growing delay until it
succeeds. A step that fails for another reason (a bug meeting an unexpected event) splits the batch, so
that one bad event cannot hold back the others: after processing, the processed events are ingested one
by one (plugins do not run again); if processing itself failed, the messages are run one by one. An
event that still fails on its own becomes a dead letter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import psycopg
import redis.exceptions
from psycopg_pool import PoolTimeout

from plugin_server.ingestion.ordering import Turn
from plugin_server.ingestion.pipeline import BatchOutcome, EventPipeline, ProcessedBatch
from plugin_server.services.metrics import get_metrics

T = TypeVar("T")
log = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    PoolTimeout,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)
MAX_RETRY_DELAY_SECONDS = 30.0

LateWork = Coroutine[Any, Any, BatchOutcome]


@dataclass(frozen=True)
class Lanes:
    """How a batch treats teams whose plugins are slow: after `patience` seconds, each is handed to
    `set_aside(messages, work, acknowledged)`, which must take those messages out of the batch (its
    acknowledgement), then await `work` (their outcome, returned once they may be acknowledged) on its
    own time, acknowledge them, and call `acknowledged()` whatever happened."""

    patience: float
    set_aside: Callable[[list[bytes], LateWork, Callable[[], None]], Awaitable[None]]


@dataclass(eq=False)
class _Part:
    """One team's events of a batch, and their processing under way (None: it failed, run them alone)."""

    team: Hashable
    decoded: ProcessedBatch
    processing: asyncio.Task[ProcessedBatch | None]


async def process_until_done(
    pipeline: EventPipeline, messages: list[bytes], turn: Turn, lanes: Lanes | None = None
) -> BatchOutcome:
    try:
        decoded = await until_available(lambda: pipeline.decode(messages))
    except Exception:
        log.exception("decoding a batch of %d failed; running its messages one by one", len(messages))
        await turn.declare(_teams_of(pipeline, messages))
        await turn.wait()
        return await _one_by_one([(message, partial(pipeline.run, [message])) for message in messages])
    teams = decoded.by_team()
    await turn.declare(teams)
    parts = [
        _Part(team, share, asyncio.create_task(_processed(pipeline, share))) for team, share in teams.items()
    ]
    late = await _late_parts(parts, turn, lanes.patience) if lanes is not None else []
    turn.set_aside(part.team for part in late)
    for index, part in enumerate(late):
        assert lanes is not None
        work = _ingest_alone(pipeline, part, turn)
        try:
            await lanes.set_aside(_messages(part.decoded), work, partial(turn.acknowledged, [part.team]))
        except BaseException:
            work.close()  # these messages stay in the batch, which is not acknowledged: redelivered
            unfinished = [later.team for later in late[index:]]
            await turn.finish(unfinished)
            turn.acknowledged(unfinished)
            raise
    on_time = [part for part in parts if part not in late]
    outcome = await _ingest_parts(pipeline, on_time, turn)
    outcome.dead_letters[:0] = decoded.outcome.dead_letters  # messages that did not decode
    return outcome


async def _processed(pipeline: EventPipeline, part: ProcessedBatch) -> ProcessedBatch | None:
    try:
        return await until_available(lambda: pipeline.run_plugins(part))
    except Exception:
        log.exception("processing %d events failed; running them one by one", len(part.events))
        return None


async def _late_parts(parts: list[_Part], turn: Turn, patience: float) -> list[_Part]:
    """The parts still processing after `patience` seconds, and those waiting behind an earlier batch's
    part of their team that was set aside (known once the earlier batches decided)."""
    if parts:
        await asyncio.wait([part.processing for part in parts], timeout=patience)
    await turn.earlier_decided()
    return [part for part in parts if not part.processing.done() or turn.behind_late(part.team)]


async def _ingest_alone(pipeline: EventPipeline, part: _Part, turn: Turn) -> BatchOutcome:
    try:
        outcome = await _ingest_parts(pipeline, [part], turn)
    finally:
        await turn.finish([part.team])
    await turn.wait_to_acknowledge([part.team])
    return outcome


async def _ingest_parts(pipeline: EventPipeline, parts: Sequence[_Part], turn: Turn) -> BatchOutcome:
    """Ingest the processed parts together (after their teams' turn); parts whose processing failed are
    run message by message."""
    teams = [part.team for part in parts]
    results = [(part, await part.processing) for part in parts]
    processed = ProcessedBatch.merged([result for _, result in results if result is not None])
    done = [part.team for part, result in results if result is not None]
    outcome = await _ingest_processed(pipeline, processed, turn, done)
    failed = [message for part, result in results if result is None for message in _messages(part.decoded)]
    if failed:
        await turn.wait(teams)
        alone = await _one_by_one([(message, partial(pipeline.run, [message])) for message in failed])
        outcome.stored += alone.stored
        outcome.dropped += alone.dropped
        outcome.dead_letters.extend(alone.dead_letters)
    return outcome


async def _ingest_processed(
    pipeline: EventPipeline, processed: ProcessedBatch, turn: Turn, teams: list[Hashable]
) -> BatchOutcome:
    """Ingest the processed events of `teams`, handing their turn on once their person step is done: the
    store, and its retries, happen outside the turn and never redo the person step."""
    if not processed.events:  # all dropped by plugins (or none): counted here, as ingest would have
        get_metrics().batch_ingested(0, processed.outcome.dropped)
        return processed.outcome
    wait_for_turn = partial(turn.wait, teams)
    try:
        applied = await until_available(lambda: pipeline.apply_persons(processed, wait_for_turn))
    except Exception:
        count = len(processed.events)
        log.exception("ingesting a batch of %d failed; ingesting its events one by one", count)
        await wait_for_turn()
        single = [(one.events[0][0], partial(pipeline.ingest, one)) for one in processed.one_by_one()]
        return _with_outcome(await _one_by_one(single), processed.outcome)
    await turn.finish(teams)
    try:
        return await until_available(lambda: pipeline.store(applied))
    except Exception:
        log.exception("storing a batch of %d failed; storing its events one by one", len(applied.items))
        single = [(message, partial(pipeline.store, one)) for message, one in applied.one_by_one()]
        return _with_outcome(await _one_by_one(single), applied.outcome)


def _with_outcome(total: BatchOutcome, before: BatchOutcome) -> BatchOutcome:
    """`total` with what was dropped and dead-lettered `before` it."""
    total.dropped += before.dropped
    total.dead_letters[:0] = before.dead_letters
    return total


def _messages(batch: ProcessedBatch) -> list[bytes]:
    return [message for message, _ in batch.events]


def _teams_of(pipeline: EventPipeline, messages: Sequence[bytes]) -> set[Hashable]:
    peek = pipeline.codec.peek
    return {event.get("team_id") for message in messages if (event := peek(message)) is not None}


async def until_available(step: Callable[[], Awaitable[T]]) -> T:
    """Run `step` until it does not fail for the database or Redis being unavailable (backing off)."""
    delay = 0.5
    while True:
        try:
            return await step()
        except TRANSIENT_ERRORS as error:
            log.error("database or Redis unavailable (%s); retrying in %.1fs", error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY_SECONDS)


async def _one_by_one(steps: Sequence[tuple[bytes, Callable[[], Awaitable[BatchOutcome]]]]) -> BatchOutcome:
    """Each message's step on its own: one that still fails (not for an unavailable service) becomes a
    dead letter."""
    total = BatchOutcome()
    for message, step in steps:
        try:
            outcome = await until_available(step)
        except Exception as error:
            log.exception("message failed alone; sending it to the dead letter store")
            outcome = BatchOutcome(
                dead_letters=[(message, f"ingestion failed: {type(error).__name__}: {error}")]
            )
        total.stored += outcome.stored
        total.dropped += outcome.dropped
        total.dead_letters.extend(outcome.dead_letters)
    return total
