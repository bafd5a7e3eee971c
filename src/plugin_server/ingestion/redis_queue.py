"""At-least-once consumption of a Celery Redis list.

Producers LPUSH onto `<queue>`; the oldest message is at the right end. A consumer never pops a
message into memory only (the original's BRPOP lost in-flight events on a crash): it moves a batch,
in one Lua script, into a list of its own, and deletes that list when the batch is done.

Redis keys, for a queue named `<queue>`:

- `<queue>:unacked:<consumer_id>:<seq>` list, one claimed batch, oldest first (seq: `<process token>-<n>`),
  or a part split off one (`<seq>.<k>`)
- `<queue>:batches:<consumer_id>`        sorted set, batch list -> claim time (a waiting claim: its deadline)
- `<queue>:consumers`                    sorted set, consumer id -> last heartbeat (Redis server time)
- `<queue>:dead-letter`                  list of JSON {reason, message, failed_at, consumer}, newest left

A consumer whose heartbeat is older than the visibility timeout is dead: any other consumer moves its
batches back to the right end of the queue (so they are taken next) and forgets it. Times come from the
Redis server clock, so consumers on different machines need not agree on the time. Scripts touch keys
they discover at run time, so this needs a single Redis (no Redis Cluster), like the original.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import count
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from plugin_server.services.metrics import get_metrics

# Lua's unpack() is limited by its C stack (about 8000 values): multi-value pushes go in chunks.
_PUSH_CHUNKED = """
local function push_chunked(command, key, items)
  for i = 1, #items, 1000 do
    redis.call(command, key, unpack(items, i, math.min(i + 999, #items)))
  end
end
"""

_NOW = """
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function as_score(seconds)
  return string.format('%.6f', seconds)
end
"""

# KEYS: queue, batch, batches, consumers. ARGV: max count, consumer id, grace in seconds ('0': none).
# Returns how many messages the batch list holds now; the consumer reads them from it (LRANGE).
# The batch is registered in the same step as the move, so no claimed message is ever out of sight.
# A claim that found nothing but is about to block (grace > 0) registers its empty batch list with a
# deadline instead of a claim time: until then, its blocking move may still deliver into it.
# The move into a new batch list is Valkey's own copy (SORT of the list's right end, oldest first, in
# its order, STORE'd), then LTRIM: no message goes through Lua, nor is written whole to the append-only
# file again (RPOP + RPUSH through Lua took 5.5-6.1 us of Valkey's CPU a message, this 1.9-2.9 with the
# LRANGE). Through Lua still: the rest after a blocking move's message, and where SORT is refused.
_CLAIM = (
    _PUSH_CHUNKED
    + _NOW
    + """
local wanted = tonumber(ARGV[1])
local function move_through_lua()
  local items = redis.call('RPOP', KEYS[1], wanted)
  if items then
    push_chunked('RPUSH', KEYS[2], items)
    return #items
  end
  return 0
end
local held = redis.call('LLEN', KEYS[2])  -- a blocking move's message, or nothing
local moved = 0
if wanted > 0 then
  local stored = false
  if held == 0 then
    -- pcall: a user whose ACL leaves out @dangerous (SORT's category) may not SORT
    stored = redis.pcall('SORT', KEYS[1], 'BY', 'nosort', 'LIMIT', 0, wanted, 'DESC', 'STORE', KEYS[2])
  end
  if type(stored) == 'number' then
    moved = stored
    if moved > 0 then
      redis.call('LTRIM', KEYS[1], 0, -moved - 1)
    end
  else
    moved = move_through_lua()
  end
end
local now = server_now()
local score = now
held = held + moved
if held == 0 then
  local grace = tonumber(ARGV[3])
  if grace <= 0 then
    return 0
  end
  score = now + grace
end
redis.call('ZADD', KEYS[4], 'NX', as_score(now), ARGV[2])
redis.call('ZADD', KEYS[3], as_score(score), KEYS[2])
return held
"""
)

# KEYS: batch, batches, dead letters. ARGV: dead letter entries.
# A batch that is no longer registered was requeued by a recovering consumer (this one looked dead); its
# messages will be processed again, so its dead letters are not stored twice. (A registered batch list
# may be empty, and so missing: its messages were all split off.)
_ACK = (
    _PUSH_CHUNKED
    + """
if redis.call('ZREM', KEYS[2], KEYS[1]) == 0 then
  return 0
end
redis.call('DEL', KEYS[1])
push_chunked('LPUSH', KEYS[3], ARGV)
return 1
"""
)

# KEYS: batch, batches, new batch. ARGV: the batch list's length, then 'all' or the positions (1-based)
# of the messages to move. Moves those messages into a new batch list registered with the same claim
# time, in one step and one pass over the list (all of them: the list is renamed); nothing when the batch
# was requeued. A list that does not hold what the consumer expects is an error, and nothing moves.
_SPLIT = (
    _PUSH_CHUNKED
    + """
local claimed = redis.call('ZSCORE', KEYS[2], KEYS[1])
if not claimed then
  return 0
end
if redis.call('ZSCORE', KEYS[2], KEYS[3]) then
  return 1  -- done already (a retry whose first reply was lost)
end
if redis.call('LLEN', KEYS[1]) ~= tonumber(ARGV[1]) then
  return redis.error_reply('the batch list does not hold what its consumer claimed')
end
if ARGV[2] == 'all' then
  redis.call('RENAME', KEYS[1], KEYS[3])
elseif #ARGV > 1 then
  local picked, moved, kept = {}, {}, {}
  for i = 2, #ARGV do
    picked[tonumber(ARGV[i])] = true
  end
  for position, item in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    if picked[position] then
      moved[#moved + 1] = item
    else
      kept[#kept + 1] = item
    end
  end
  redis.call('DEL', KEYS[1])
  push_chunked('RPUSH', KEYS[1], kept)
  push_chunked('RPUSH', KEYS[3], moved)
end
redis.call('ZADD', KEYS[2], claimed, KEYS[3])
return 1
"""
)

# KEYS: consumers. ARGV: consumer id.
_HEARTBEAT = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], as_score(server_now()), ARGV[1])
"""
)

# KEYS: consumers. ARGV: visibility timeout. Returns the ids of consumers whose heartbeat is too old.
_DEAD_CONSUMERS = (
    _NOW
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. as_score(server_now() - tonumber(ARGV[1])))
"""
)

# Moves the messages of the batch lists in `batches` back to the right end of `queue`, so that the
# oldest message of the oldest batch is taken first, and forgets those lists; except the ones for which
# `keep(batch)` is true, and empty ones whose deadline has not passed (a blocking claim may still land a
# message there, even while its consumer is frozen). Returns the number of messages moved and the list
# of batch lists left pending.
_REQUEUE = (
    _PUSH_CHUNKED
    + _NOW
    + """
local function requeue(batches, queue, keep)
  local now = server_now()
  local moved, pending = 0, {}
  local entries = redis.call('ZRANGE', batches, 0, -1, 'REV', 'WITHSCORES')
  for i = 1, #entries, 2 do
    local batch = entries[i]
    if not keep(batch) then
      local items = redis.call('LRANGE', batch, 0, -1)
      if #items > 0 then
        local newest_first = {}
        for j = #items, 1, -1 do
          newest_first[#newest_first + 1] = items[j]
        end
        push_chunked('RPUSH', queue, newest_first)
        redis.call('DEL', batch)
        redis.call('ZREM', batches, batch)
        moved = moved + #items
      elseif tonumber(entries[i + 1]) < now then
        redis.call('ZREM', batches, batch)
      else
        pending[#pending + 1] = batch
      end
    end
  end
  return moved, pending
end
"""
)

# KEYS: consumers, batches of the dead consumer, queue. ARGV: its id, visibility timeout.
# The heartbeat is checked again here, atomically: a consumer that came back is left alone, and of two
# consumers recovering the same dead one, the second finds nothing left. The consumer is forgotten once
# no claim of it is pending.
_RECOVER_DEAD = (
    _REQUEUE
    + """
local beat = redis.call('ZSCORE', KEYS[1], ARGV[1])
if beat and tonumber(beat) >= server_now() - tonumber(ARGV[2]) then
  return 0
end
local moved, pending = requeue(KEYS[2], KEYS[3], function(batch) return false end)
if #pending == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return moved
"""
)

# KEYS: batches of this consumer, queue. ARGV: key prefix of this instance's batches, then keys of this
# instance that it gave up on (a claim interrupted midway). Requeues everything else: what a previous
# process with the same consumer id left behind. Returns the number of messages moved, then the given-up
# keys still pending.
_RECOVER_OWN = (
    _REQUEUE
    + """
local prefix = ARGV[1]
local given_up = {}
for i = 2, #ARGV do
  given_up[ARGV[i]] = true
end
local moved, pending = requeue(KEYS[1], KEYS[2], function(batch)
  return string.sub(batch, 1, #prefix) == prefix and not given_up[batch]
end)
local result = {moved}
for _, batch in ipairs(pending) do
  if given_up[batch] then
    result[#result + 1] = batch
  end
end
return result
"""
)

# KEYS: batches, consumers. ARGV: consumer id. Forgets registered batch lists that hold nothing, then the
# consumer itself unless it still has batches (those are left for recovery once its heartbeat expires).
_CLOSE = """
for _, batch in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', batch) == 0 then
    redis.call('ZREM', KEYS[1], batch)
  end
end
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
end
"""

# KEYS: dead letters, queue. ARGV: how many (-1: all). Oldest first; entries that cannot be read stay.
_REPLAY = """
local n = redis.call('LLEN', KEYS[1])
local limit = tonumber(ARGV[1])
if limit >= 0 and limit < n then
  n = limit
end
local replayed = 0
for _ = 1, n do
  local entry = redis.call('RPOP', KEYS[1])
  local ok, letter = pcall(cjson.decode, entry)
  if ok and type(letter) == 'table' and type(letter.message) == 'string' then
    redis.call('LPUSH', KEYS[2], letter.message)
    replayed = replayed + 1
  else
    redis.call('LPUSH', KEYS[1], entry)
  end
end
return replayed
"""


@dataclass(slots=True)
class ClaimedBatch:
    """A claimed batch: its list in Redis and the messages claimed into it, oldest first. `held` is what
    that list holds now (the messages less those split off; replaced on a split, never changed in
    place, so it starts as `messages` itself), `parts` how many parts were split off."""

    key: str
    messages: list[bytes]
    held: list[bytes] = field(init=False)
    parts: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.held = self.messages


class ReliableQueue:
    """One consumer of a Celery Redis list; messages leave Redis only through `ack`.

    `consumer_id` must be unique among running consumers and should stay the same across restarts of
    the same worker, so that the restarted worker takes back what it left. Call `heartbeat` at start
    and then well within every `visibility_timeout` seconds; a consumer that misses it is considered
    dead and its batches are handed to others (so a batch may be processed twice, never lost).
    Several claims may be in flight at once.
    """

    def __init__(
        self, redis: aioredis.Redis, queue: str, consumer_id: str, *, visibility_timeout: float
    ) -> None:
        if redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("ReliableQueue needs a Redis client that returns bytes (decode_responses=False)")
        self.queue = queue
        self.consumer_id = consumer_id
        self.visibility_timeout = visibility_timeout
        self._redis = redis
        self._consumers_key = f"{queue}:consumers"
        self._batches_key = _batches_key(queue, consumer_id)
        self._dead_letter_key = _dead_letter_key(queue)
        # Batch keys of this process carry a random token, so they never collide with the leftovers of
        # an earlier process with the same consumer id, which `recover_abandoned` takes back.
        self._own_prefix = f"{queue}:unacked:{consumer_id}:{os.urandom(6).hex()}-"
        self._sequence = count()
        self._given_up: set[str] = set()
        self._claim = redis.register_script(_CLAIM)
        self._ack = redis.register_script(_ACK)
        self._split = redis.register_script(_SPLIT)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._dead_consumers = redis.register_script(_DEAD_CONSUMERS)
        self._recover_dead = redis.register_script(_RECOVER_DEAD)
        self._recover_own = redis.register_script(_RECOVER_OWN)
        self._close = redis.register_script(_CLOSE)

    async def claim(self, max_count: int, block_timeout: float) -> ClaimedBatch | None:
        """Up to `max_count` messages, oldest first, waiting up to `block_timeout` seconds (0: not at all)
        for the first one. None when the queue stayed empty."""
        if max_count < 1:
            raise ValueError("max_count must be at least 1")
        key = f"{self._own_prefix}{next(self._sequence)}"
        # How long a blocking move might still land a message after the claim script (with a margin
        # for the command's way to the server).
        grace = block_timeout + self.visibility_timeout if block_timeout > 0 else 0
        try:
            messages = await self._claim_into(key, max_count, grace)
            if not messages and grace:
                # Registered by the script above, so a crash right after the move loses nothing.
                seconds: Any = block_timeout  # fractions work; redis-py's hint says int
                first = await self._redis.blmove(self.queue, key, seconds, "RIGHT", "RIGHT")
                if first is None:
                    await self._redis.zrem(self._batches_key, key)
                    return None
                messages = await self._claim_into(key, max_count - 1, grace)  # `first`, then the rest
        except BaseException:
            # Interrupted (e.g. cancelled) after the script may have moved messages: hand the batch to
            # the next `recover_abandoned`.
            self._given_up.add(key)
            raise
        return ClaimedBatch(key, messages) if messages else None

    async def ack(self, batch: ClaimedBatch, dead_letters: Sequence[tuple[bytes, str]] = ()) -> bool:
        """Remove the batch from Redis, storing `dead_letters` (message, reason) in the same atomic step.

        False when the batch was no longer there: this consumer had been taken for dead and its batch
        requeued, so its messages will be delivered again (and no dead letter is stored now).
        Acknowledging twice is harmless, so an ack whose reply was lost can be retried.
        """
        failed_at = datetime.now(UTC).isoformat()
        entries = [
            orjson.dumps(
                {
                    # Messages are JSON text; undecodable bytes are kept visible as escapes.
                    "reason": reason,
                    "message": message.decode("utf-8", "backslashreplace"),
                    "failed_at": failed_at,
                    "consumer": self.consumer_id,
                }
            )
            for message, reason in dead_letters
        ]
        keys = [batch.key, self._batches_key, self._dead_letter_key]
        acknowledged = bool(await self._ack(keys=keys, args=entries))
        if acknowledged:
            get_metrics().dead_lettered(len(entries))
        return acknowledged

    async def split_off(self, batch: ClaimedBatch, messages: Sequence[bytes]) -> ClaimedBatch:
        """Move `messages` of a claimed batch into a batch of their own, acknowledged on its own (the
        rest of `batch` can then be acknowledged without them). They are picked out by their position in
        the batch list; when they are all it holds, the list is renamed. A retry after a failure (a reply
        lost) finds the part already split off."""
        # Named after the batch (so under this process's prefix), the same in a retry.
        part = ClaimedBatch(f"{batch.key}.{batch.parts}", list(messages))
        positions, kept = _positions(batch.held, part.messages)
        picked: list[int | str] = ["all"] if batch.held and not kept else list(positions)
        keys = [batch.key, self._batches_key, part.key]
        await self._split(keys=keys, args=[len(batch.held), *picked])
        batch.held, batch.parts = kept, batch.parts + 1
        return part

    async def heartbeat(self) -> None:
        """Record this consumer as alive now."""
        await self._heartbeat(keys=[self._consumers_key], args=[self.consumer_id])

    async def recover_abandoned(self) -> int:
        """Requeue the batches of dead consumers and this consumer id's leftovers from an earlier process.

        Returns how many messages went back to the queue. Safe to call at any time, from any number of
        consumers at once: each batch list is moved back in one atomic step, exactly once.
        """
        dead = await self._dead_consumers(keys=[self._consumers_key], args=[self.visibility_timeout])
        moved = 0
        for member in cast(list[bytes], dead):
            consumer_id = member.decode()
            if consumer_id != self.consumer_id:  # this process is alive; its own batches are handled below
                keys = [self._consumers_key, _batches_key(self.queue, consumer_id), self.queue]
                moved += int(await self._recover_dead(keys=keys, args=[consumer_id, self.visibility_timeout]))
        given_up = list(self._given_up)
        own_keys = [self._batches_key, self.queue]
        own_moved, *still_pending = await self._recover_own(keys=own_keys, args=[self._own_prefix, *given_up])
        self._given_up.difference_update(set(given_up) - {key.decode() for key in still_pending})
        return moved + int(own_moved)

    async def close(self) -> None:
        """Deregister this consumer. If batches are still unacknowledged, its heartbeat is left to
        expire, so that they are recovered by others."""
        await self._close(keys=[self._batches_key, self._consumers_key], args=[self.consumer_id])

    async def _claim_into(self, key: str, max_count: int, grace: float) -> list[bytes]:
        """What the batch list `key` holds once up to `max_count` more messages moved into it."""
        keys = [self.queue, key, self._batches_key, self._consumers_key]
        held = await self._claim(keys=keys, args=[max_count, self.consumer_id, grace])
        return cast(list[bytes], await self._redis.lrange(key, 0, -1)) if held else []


async def dead_letter_count(redis: aioredis.Redis, queue: str) -> int:
    return await redis.llen(_dead_letter_key(queue))


async def read_dead_letters(redis: aioredis.Redis, queue: str, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` dead letters, newest first: {reason, message, failed_at, consumer}."""
    if limit < 1:
        return []
    entries = await redis.lrange(_dead_letter_key(queue), 0, limit - 1)
    return [orjson.loads(entry) for entry in entries]


async def replay_dead_letters(redis: aioredis.Redis, queue: str, limit: int | None = None) -> int:
    """Put up to `limit` dead letters (all when None), oldest first, back on the queue as their original
    messages, behind what is already waiting. Returns how many were replayed."""
    script = redis.register_script(_REPLAY)
    keys = [_dead_letter_key(queue), queue]
    return cast(int, await script(keys=keys, args=[-1 if limit is None else limit]))


def _positions(held: list[bytes], messages: list[bytes]) -> tuple[list[int], list[bytes]]:
    """The positions (1-based) in `held` of `messages`, one for each of them, and the messages left."""
    counts = Counter(messages)
    positions, kept = [], []
    for position, message in enumerate(held, 1):
        if counts[message] > 0:
            counts[message] -= 1
            positions.append(position)
        else:
            kept.append(message)
    if len(positions) != len(messages):
        raise ValueError("split_off: messages that the batch does not hold")
    return positions, kept


def _batches_key(queue: str, consumer_id: str) -> str:
    return f"{queue}:batches:{consumer_id}"


def _dead_letter_key(queue: str) -> str:
    return f"{queue}:dead-letter"
