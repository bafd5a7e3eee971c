"""Where events come from: a `Source` hands out claimed micro-batches of wire messages and takes them
back acknowledged; its `MessageCodec` turns one wire message into the pipeline's internal envelope (a
raw event, or a plugin job). Wire formats (kombu envelopes, Kafka JSON) live only in the source's module.

- `celery_redis.CelerySource`: the Celery list on Redis (at-least-once through the reliable queue);
- `kafka.KafkaSource`: KAFKA_CONSUMPTION_TOPIC in one consumer group (KAFKA_ENABLED).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from plugin_server.ingestion.types import RawEvent
from plugin_server.jobs.queue import PluginJob

DeadLetter = tuple[bytes, str]


class MessageCodec(Protocol):
    """Reads one wire message of a source."""

    async def decode(self, message: bytes) -> RawEvent | PluginJob:
        """The event (or plugin job) the message carries; raises `MalformedMessage` (or ValueError,
        TypeError) when it can never be processed, with the reason."""
        ...

    def peek(self, message: bytes) -> RawEvent | None:
        """The event of a message as far as it can be read without any lookup (for logs, ordering and
        dead letters); None when there is none."""
        ...


class Batch(Protocol):
    """A claimed micro-batch: its messages, oldest first, and whatever the source needs to ack it."""

    messages: list[bytes]


class Source(Protocol):
    """A stream of claimed batches. A message is gone from the source only once its batch is acked;
    a worker that dies before that has its messages delivered again (at-least-once)."""

    name: str  # the `source` label of the received-events metric
    can_split: bool  # whether `split_off` works (slow teams' events acknowledged on their own)

    @property
    def codec(self) -> MessageCodec: ...

    async def start(self) -> None:
        """Join the source (and take back what an earlier process of this consumer left)."""
        ...

    async def claim(self, max_count: int, block_timeout: float) -> Any:
        """Up to `max_count` messages, waiting up to `block_timeout` s for the first; None if none came."""
        ...

    async def ack(self, batch: Any, dead_letters: Sequence[DeadLetter] = ()) -> bool:
        """The batch is done: store its dead letters (message, reason) and release its messages. False
        when the batch was taken back meanwhile (its messages are delivered again)."""
        ...

    async def split_off(self, batch: Any, messages: Sequence[bytes]) -> Any:
        """A batch of its own for `messages` of `batch`, acknowledged separately (only if `can_split`)."""
        ...

    async def paused_until(self, room: Awaitable[object]) -> None:
        """Wait for `room` (a free place in the full pipeline); a source that fetches ahead of claims
        stops fetching meanwhile, so that a slow pipeline does not grow memory."""
        ...

    async def housekeeping(self) -> int | None:
        """Periodic upkeep (heartbeats, recovering dead consumers' messages); called every few seconds.
        Returns this consumer's lag (messages waiting for it) when the source knows it per consumer."""
        ...

    async def close(self) -> None: ...
