"""At-least-once consumption of the Celery list on a real Valkey."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aioredis

from plugin_server.ingestion.batches import until_available
from plugin_server.ingestion.redis_queue import (
    ReliableQueue,
    dead_letter_count,
    read_dead_letters,
    replay_dead_letters,
)

QUEUE = "posthog-plugins"
TIMEOUT = 0.2  # visibility timeout of consumers that die in these tests


def messages(count: int, start: int = 0) -> list[bytes]:
    return [f"m{i}".encode() for i in range(start, start + count)]


async def produce(client: aioredis.Redis, items: list[bytes]) -> None:
    """LPUSH one at a time, as producers do, so items[0] is the oldest."""
    for item in items:
        await client.lpush(QUEUE, item)


def consumer(client: aioredis.Redis, consumer_id: str, timeout: float = TIMEOUT) -> ReliableQueue:
    return ReliableQueue(client, QUEUE, consumer_id, visibility_timeout=timeout)


async def consumers_alive(client: aioredis.Redis) -> set[bytes]:
    return set(cast(list[bytes], await client.zrange(f"{QUEUE}:consumers", 0, -1)))


async def test_claim_takes_oldest_first_up_to_max_count(aredis: aioredis.Redis) -> None:
    queue = consumer(aredis, "c1")
    await produce(aredis, messages(10))

    first = await queue.claim(4, 0)
    second = await queue.claim(100, 0)

    assert first is not None and second is not None
    assert first.messages == messages(4)
    assert second.messages == messages(6, start=4)
    assert await queue.claim(4, 0) is None
    assert await aredis.lrange(first.key, 0, -1) == messages(4)
    assert first.key.startswith(f"{QUEUE}:unacked:c1:")
    assert first.key != second.key
    assert await aredis.zrange(f"{QUEUE}:batches:c1", 0, -1) == [first.key.encode(), second.key.encode()]


async def test_a_user_that_may_not_sort_claims_through_lua(aredis: aioredis.Redis, redis_url: str) -> None:
    """The claim copies messages with SORT ... STORE, in ACL category @dangerous: a Valkey user
    without it still claims (the script moves the messages through Lua instead), in the same order."""
    await aredis.acl_setuser(
        "no-sort", enabled=True, passwords=["+secret"], keys=["~*"], channels=["&*"],
        categories=["+@all", "-@dangerous"],
    )  # fmt: skip
    limited = aioredis.Redis.from_url(redis_url, username="no-sort", password="secret")
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            await limited.sort(QUEUE, store="elsewhere")
        queue = consumer(limited, "c1")
        await produce(aredis, messages(10))
        first, second = await queue.claim(4, 0), await queue.claim(100, 0)
        assert first is not None and second is not None
        assert (first.messages, second.messages) == (messages(4), messages(6, start=4))
        assert await aredis.lrange(first.key, 0, -1) == messages(4)
        assert await queue.ack(first) and await queue.ack(second)
        assert await aredis.llen(QUEUE) == 0
    finally:
        await limited.aclose()
        await aredis.acl_deluser("no-sort")


async def test_ack_removes_the_batch(aredis: aioredis.Redis) -> None:
    queue = consumer(aredis, "c1")
    await produce(aredis, messages(3))
    batch = await queue.claim(10, 0)
    assert batch is not None

    assert await queue.ack(batch) is True

    assert not await aredis.exists(batch.key, f"{QUEUE}:batches:c1", QUEUE)
    assert await queue.ack(batch) is False  # a retried ack is harmless
    assert await dead_letter_count(aredis, QUEUE) == 0


async def test_blocking_claim_returns_when_a_message_arrives(aredis: aioredis.Redis, redis_url: str) -> None:
    queue = consumer(aredis, "c1")
    waiting = asyncio.create_task(queue.claim(10, 5))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    producer = aioredis.Redis.from_url(redis_url)
    await producer.lpush(QUEUE, b"a", b"b", b"c")
    await producer.aclose()

    batch = await asyncio.wait_for(waiting, 1)

    assert time.monotonic() - started < 0.5
    assert batch is not None and batch.messages == [b"a", b"b", b"c"]
    assert await aredis.lrange(batch.key, 0, -1) == [b"a", b"b", b"c"]
    assert await queue.ack(batch)


async def test_blocking_claim_times_out_without_leftovers(aredis: aioredis.Redis) -> None:
    queue = consumer(aredis, "c1")

    assert await queue.claim(10, 0.1) is None

    assert await aredis.zcard(f"{QUEUE}:batches:c1") == 0


async def test_batch_of_a_dead_consumer_is_requeued_first_in_order(aredis: aioredis.Redis) -> None:
    dead, alive = consumer(aredis, "dead"), consumer(aredis, "alive")
    await produce(aredis, messages(5))
    lost = await dead.claim(5, 0)  # and then the process stops without acknowledging
    await produce(aredis, messages(3, start=5))
    await asyncio.sleep(TIMEOUT + 0.1)
    await alive.heartbeat()

    assert await alive.recover_abandoned() == 5

    assert lost is not None and not await aredis.exists(lost.key)
    assert await consumers_alive(aredis) == {b"alive"}
    assert not await aredis.exists(f"{QUEUE}:batches:dead")
    batch = await alive.claim(100, 0)
    assert batch is not None and batch.messages == messages(8)
    # The stopped consumer comes back: its batch is gone, and nothing it says is stored twice.
    assert await dead.ack(lost, [(b"m0", "bad")]) is False
    assert await dead_letter_count(aredis, QUEUE) == 0


async def test_two_recoverers_requeue_exactly_once(aredis: aioredis.Redis, redis_url: str) -> None:
    other_client = aioredis.Redis.from_url(redis_url)
    dead = consumer(aredis, "dead")
    first, second = consumer(aredis, "r1"), consumer(other_client, "r2")
    await produce(aredis, messages(60))
    for _ in range(3):
        await dead.claim(20, 0)
    await asyncio.sleep(TIMEOUT + 0.1)
    await first.heartbeat()
    await second.heartbeat()

    moved = await asyncio.gather(*(queue.recover_abandoned() for queue in [first, second] * 5))

    assert sum(moved) == 60
    assert sorted(await aredis.lrange(QUEUE, 0, -1)) == sorted(messages(60))
    await other_client.aclose()


async def test_live_consumer_is_left_alone(aredis: aioredis.Redis) -> None:
    busy, other = consumer(aredis, "busy", timeout=10), consumer(aredis, "other", timeout=10)
    await produce(aredis, messages(3))
    batch = await busy.claim(3, 0)
    await busy.heartbeat()

    assert await other.recover_abandoned() == 0
    assert await busy.recover_abandoned() == 0  # its own batch in flight is not a leftover

    assert batch is not None and await busy.ack(batch) is True


async def test_restart_with_the_same_id_takes_back_its_leftovers(aredis: aioredis.Redis) -> None:
    before = consumer(aredis, "worker-1", timeout=10)
    await produce(aredis, messages(6))
    await before.claim(2, 0)
    await before.claim(2, 0)

    after = consumer(aredis, "worker-1", timeout=10)
    await after.heartbeat()
    in_flight = await after.claim(1, 0)

    assert await after.recover_abandoned() == 4
    # Back at the end where consumers take from, in the order they first arrived.
    assert await aredis.lrange(QUEUE, 0, -1) == [b"m5", b"m3", b"m2", b"m1", b"m0"]
    assert in_flight is not None and in_flight.messages == [b"m4"]
    assert await after.ack(in_flight) is True
    assert await after.recover_abandoned() == 0


async def test_interrupted_claim_is_recovered(aredis: aioredis.Redis) -> None:
    queue = consumer(aredis, "c1")
    batches = f"{QUEUE}:batches:c1"
    waiting = asyncio.create_task(queue.claim(10, 0.3))
    await asyncio.sleep(0.1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await aredis.lpush(f"{QUEUE}:unacked:c1:ignored", b"never")  # an unregistered list is not a batch

    # Until the blocking move's deadline, a message may still land in the batch list: it stays registered.
    assert await queue.recover_abandoned() == 0
    (pending,) = cast(list[bytes], await aredis.zrange(batches, 0, -1))
    await aredis.rpush(pending, b"late")
    assert await queue.recover_abandoned() == 1
    late = await queue.claim(10, 0)
    assert late is not None and late.messages == [b"late"]
    await queue.ack(late)

    waiting = asyncio.create_task(queue.claim(10, 0.3))
    await asyncio.sleep(0.1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.3 + TIMEOUT)
    assert await queue.recover_abandoned() == 0
    assert await aredis.zcard(batches) == 0


FROZEN_CONSUMER = """
import asyncio, sys
import redis.asyncio as aioredis
from plugin_server.ingestion.redis_queue import ReliableQueue

async def main() -> None:
    queue = ReliableQueue(aioredis.Redis.from_url(sys.argv[1]), sys.argv[2], "frozen", visibility_timeout=0.2)
    await queue.heartbeat()
    await queue.claim(10, 3)

asyncio.run(main())
"""


async def test_a_consumer_frozen_in_a_blocking_claim_loses_nothing(
    aredis: aioredis.Redis, redis_url: str
) -> None:
    """Frozen (as a stalled worker is) while its BLMOVE waits on the server, taken for dead, then killed:
    the message that the server still hands to its BLMOVE is recovered."""
    frozen = subprocess.Popen([sys.executable, "-c", FROZEN_CONSUMER, redis_url, QUEUE])
    try:
        deadline = time.monotonic() + 10
        while (await aredis.info("clients"))["blocked_clients"] < 1:
            assert time.monotonic() < deadline and frozen.poll() is None
            await asyncio.sleep(0.02)
        os.kill(frozen.pid, signal.SIGSTOP)
        await asyncio.sleep(TIMEOUT + 0.1)
        rescuer = consumer(aredis, "rescuer")
        await rescuer.heartbeat()
        assert await rescuer.recover_abandoned() == 0

        await aredis.lpush(QUEUE, b"event")
        assert await aredis.llen(QUEUE) == 0  # handed to the frozen consumer's BLMOVE
    finally:
        frozen.kill()
        frozen.wait()

    assert await rescuer.recover_abandoned() == 1
    assert await aredis.lrange(QUEUE, 0, -1) == [b"event"]
    assert await consumers_alive(aredis) == {b"rescuer"}


async def test_dead_letters_are_stored_with_the_ack_and_replayable(aredis: aioredis.Redis) -> None:
    queue = consumer(aredis, "c1")
    odd = 'événement 🎉 \\u00e9 "quoted"'.encode()
    await produce(aredis, [b"good", b"bad", odd])
    batch = await queue.claim(10, 0)
    assert batch is not None

    await queue.ack(batch, [(b"bad", "malformed message: not JSON"), (odd, "invalid event: no uuid")])

    assert await aredis.llen(QUEUE) == 0
    assert await dead_letter_count(aredis, QUEUE) == 2
    newest, oldest = await read_dead_letters(aredis, QUEUE, 10)
    assert newest["reason"] == "invalid event: no uuid"
    assert newest["message"] == odd.decode()
    assert newest["consumer"] == "c1"
    assert datetime.fromisoformat(newest["failed_at"]).tzinfo is not None
    assert oldest["message"] == "bad"
    assert await read_dead_letters(aredis, QUEUE, 1) == [newest]

    assert await replay_dead_letters(aredis, QUEUE, 1) == 1
    assert await aredis.lrange(QUEUE, 0, -1) == [b"bad"]
    assert await replay_dead_letters(aredis, QUEUE) == 1
    assert await dead_letter_count(aredis, QUEUE) == 0
    replayed = await queue.claim(10, 0)
    assert replayed is not None and replayed.messages == [b"bad", odd]


async def test_undecodable_message_is_kept_readable(aredis: aioredis.Redis) -> None:
    queue = consumer(aredis, "c1")
    await produce(aredis, [b"\xff\xfeoops"])
    batch = await queue.claim(1, 0)
    assert batch is not None

    await queue.ack(batch, [(b"\xff\xfeoops", "malformed message")])

    assert (await read_dead_letters(aredis, QUEUE, 1))[0]["message"] == "\\xff\\xfeoops"


async def test_replay_leaves_unreadable_entries(aredis: aioredis.Redis) -> None:
    await aredis.lpush(f"{QUEUE}:dead-letter", b"{not json", b'{"reason": "r", "message": "m"}')

    assert await replay_dead_letters(aredis, QUEUE) == 1

    assert await aredis.lrange(f"{QUEUE}:dead-letter", 0, -1) == [b"{not json"]
    assert await aredis.lrange(QUEUE, 0, -1) == [b"m"]


async def test_close_keeps_the_heartbeat_while_batches_are_unacknowledged(aredis: aioredis.Redis) -> None:
    queue, rescuer = consumer(aredis, "c1"), consumer(aredis, "rescuer")
    await produce(aredis, messages(2))
    await queue.heartbeat()
    batch = await queue.claim(1, 0)
    assert batch is not None

    await queue.close()
    assert await consumers_alive(aredis) == {b"c1"}
    await asyncio.sleep(TIMEOUT + 0.1)
    await rescuer.heartbeat()
    assert await rescuer.recover_abandoned() == 1

    await rescuer.close()
    assert await consumers_alive(aredis) == set()


async def test_close_after_ack_deregisters(aredis: aioredis.Redis) -> None:
    queue = consumer(aredis, "c1")
    await produce(aredis, messages(1))
    batch = await queue.claim(1, 0)
    assert batch is not None
    await queue.ack(batch)

    await queue.close()

    assert await consumers_alive(aredis) == set()
    assert not await aredis.exists(f"{QUEUE}:batches:c1")


async def unacked_lists(client: aioredis.Redis) -> dict[bytes, list[bytes]]:
    """Every batch list in Redis, registered or not, and what it holds."""
    keys = cast(list[bytes], await client.keys(f"{QUEUE}:unacked:*"))
    return {key: cast(list[bytes], await client.lrange(key, 0, -1)) for key in keys}


async def test_split_off_moves_messages_by_position_and_renames_a_whole_batch(aredis: aioredis.Redis) -> None:
    queue = consumer(aredis, "c1", timeout=10)
    sent = [b"a", b"b", b"a", b"c", b"d", b"e"]  # a message may come twice (a producer's retry)
    await produce(aredis, sent)
    batch = await queue.claim(10, 0)
    assert batch is not None

    first = await queue.split_off(batch, [b"a", b"d"])  # one of the two a's
    second = await queue.split_off(batch, [b"e", b"b"])
    assert await unacked_lists(aredis) == {
        batch.key.encode(): [b"a", b"c"],
        first.key.encode(): [b"a", b"d"],
        second.key.encode(): [b"b", b"e"],  # in the order of the batch
    }
    # The rest is all the batch holds: its list becomes the part's, as it is.
    rest = await queue.split_off(batch, [b"c", b"a"])
    assert await unacked_lists(aredis) == {
        first.key.encode(): [b"a", b"d"],
        second.key.encode(): [b"b", b"e"],
        rest.key.encode(): [b"a", b"c"],
    }
    registered = cast(list[bytes], await aredis.zrange(f"{QUEUE}:batches:c1", 0, -1))
    assert sorted(registered) == sorted(key.encode() for key in [batch.key, first.key, second.key, rest.key])

    for claimed in [batch, first, second, rest]:
        assert await queue.ack(claimed) is True
    assert await unacked_lists(aredis) == {}
    assert await aredis.zcard(f"{QUEUE}:batches:c1") == 0


async def test_split_off_refuses_what_the_batch_list_does_not_hold(aredis: aioredis.Redis) -> None:
    queue = consumer(aredis, "c1", timeout=10)
    await produce(aredis, messages(3))
    batch = await queue.claim(10, 0)
    assert batch is not None

    with pytest.raises(ValueError, match="does not hold"):
        await queue.split_off(batch, [b"m1", b"m1"])
    await aredis.rpush(batch.key, b"stranger")  # the list is not what the consumer claimed
    with pytest.raises(redis.ResponseError, match="does not hold"):
        await queue.split_off(batch, [b"m1"])
    with pytest.raises(redis.ResponseError, match="does not hold"):
        await queue.split_off(batch, messages(3))

    assert await unacked_lists(aredis) == {batch.key.encode(): [*messages(3), b"stranger"]}
    assert await aredis.zcard(f"{QUEUE}:batches:c1") == 1


async def test_a_split_retried_after_its_reply_was_lost_moves_nothing_twice(
    aredis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = consumer(aredis, "c1", timeout=10)
    await produce(aredis, messages(4))
    batch = await queue.claim(10, 0)
    assert batch is not None
    split, replies = queue._split, []

    async def reply_lost(**kwargs: Any) -> Any:
        await split(**kwargs)
        replies.append(kwargs)
        if len(replies) == 1:
            raise redis.ConnectionError("the reply was lost")

    monkeypatch.setattr(queue, "_split", reply_lost)
    part = await until_available(lambda: queue.split_off(batch, [b"m2"]))
    rest = await until_available(lambda: queue.split_off(batch, [b"m0", b"m1", b"m3"]))

    assert len(replies) == 3
    assert await unacked_lists(aredis) == {
        part.key.encode(): [b"m2"],
        rest.key.encode(): [*messages(2), b"m3"],
    }


SPLITTING_CONSUMER = """
import asyncio, sys
import redis.asyncio as aioredis
from plugin_server.ingestion.redis_queue import ReliableQueue

async def main() -> None:
    queue = ReliableQueue(aioredis.Redis.from_url(sys.argv[1]), sys.argv[2], "splitter", visibility_timeout=0.2)
    await queue.heartbeat()
    some = await queue.claim(3, 0)
    await queue.split_off(some, some.messages[1:2])
    whole = await queue.claim(3, 0)
    await queue.split_off(whole, whole.messages)
    print("split", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_split_off_parts_and_renamed_batches_survive_a_kill_9(
    aredis: aioredis.Redis, redis_url: str
) -> None:
    """A worker killed after setting events aside (a batch partly, a batch whole, by renaming its list)
    and before acknowledging anything: every message comes back once."""
    await produce(aredis, messages(6))
    splitter = subprocess.Popen(
        [sys.executable, "-c", SPLITTING_CONSUMER, redis_url, QUEUE], stdout=subprocess.PIPE, text=True
    )
    try:
        assert splitter.stdout is not None and splitter.stdout.readline() == "split\n"
        held = await unacked_lists(aredis)
        assert sorted(len(items) for items in held.values()) == [1, 2, 3]  # the whole batch: one list
        os.kill(splitter.pid, signal.SIGKILL)
    finally:
        splitter.kill()
        splitter.wait()
    await asyncio.sleep(TIMEOUT + 0.1)
    rescuer = consumer(aredis, "rescuer")
    await rescuer.heartbeat()

    assert await rescuer.recover_abandoned() == 6

    assert sorted(await aredis.lrange(QUEUE, 0, -1)) == messages(6)
    assert await unacked_lists(aredis) == {}
    assert await consumers_alive(aredis) == {b"rescuer"}


async def test_large_batches_cross_the_lua_unpack_limit(aredis: aioredis.Redis) -> None:
    dead, alive = consumer(aredis, "dead"), consumer(aredis, "alive")
    await aredis.lpush(QUEUE, *messages(12_000))
    lost = await dead.claim(12_000, 0)
    assert lost is not None and lost.messages == messages(12_000)
    await asyncio.sleep(TIMEOUT + 0.1)
    await alive.heartbeat()

    assert await alive.recover_abandoned() == 12_000

    batch = await alive.claim(12_000, 0)
    assert batch is not None and batch.messages == messages(12_000)
    await alive.ack(batch, [(message, "r") for message in batch.messages])
    assert await dead_letter_count(aredis, QUEUE) == 12_000


def test_a_decoding_client_is_refused(redis_url: str, redis_client: redis.Redis) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)

    with pytest.raises(ValueError, match="decode_responses"):
        ReliableQueue(client, QUEUE, "c1", visibility_timeout=1)
