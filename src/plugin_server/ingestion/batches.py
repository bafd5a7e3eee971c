"""Getting a micro-batch through the pipeline whatever happens, without running plugins twice.

The batch is processed (decode, processEvent) once, then ingested. A step that fails because the
database or Redis is unavailable is retried with a growing delay until it succeeds. A step that fails
for another reason (a bug meeting an unexpected event) splits the batch, so that one bad event cannot
hold back the others: after processing, the processed events are ingested one by one (plugins do not
run again); if processing itself failed, the messages are run one by one. An event that still fails
on its own becomes a dead letter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TypeVar

import psycopg
import redis.exceptions
from psycopg_pool import PoolTimeout

from plugin_server.ingestion.ordering import Turn
from plugin_server.ingestion.pipeline import BatchOutcome, EventPipeline

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


async def process_until_done(pipeline: EventPipeline, messages: list[bytes], turn: Turn) -> BatchOutcome:
    try:
        processed = await until_available(lambda: pipeline.process(messages))
    except Exception:
        log.exception("processing a batch of %d failed; running its messages one by one", len(messages))
        await turn.wait()
        return await _one_by_one([(message, partial(pipeline.run, [message])) for message in messages])
    try:
        return await until_available(lambda: pipeline.ingest(processed, turn.wait))
    except Exception:
        log.exception("ingesting a batch of %d failed; ingesting its events one by one", len(messages))
        await turn.wait()
        single = [(one.events[0][0], partial(pipeline.ingest, one)) for one in processed.one_by_one()]
        total = await _one_by_one(single)
        total.dropped += processed.outcome.dropped
        total.dead_letters[:0] = processed.outcome.dead_letters
        return total


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
