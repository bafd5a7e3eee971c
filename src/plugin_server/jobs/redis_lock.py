"""A lock that one process of the cluster holds at a time, kept alive in Redis (a single-node redlock).

The holder's random token is stored with a TTL (SET NX PX). The holder extends it every TTL/2 and
others try to take it every TTL/10, so when the holder dies the lock moves on within about one TTL.
Extending and releasing compare the token first (in Lua), so a holder that lost the lock can never
extend or delete its successor's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLock:
    def __init__(self, redis: aioredis.Redis, key: str, *, ttl: float) -> None:
        self.redis = redis
        self.key = key
        self.ttl = ttl
        self.token = secrets.token_hex(16)
        self._valid_until = 0.0  # monotonic time until which we surely hold the lock
        self._extend = redis.register_script(_EXTEND)
        self._release = redis.register_script(_RELEASE)

    @property
    def held(self) -> bool:
        return time.monotonic() < self._valid_until

    async def acquire_or_extend(self) -> bool:
        """One attempt to take the lock, or to extend it if we hold it. Returns whether we hold it now."""
        started = time.monotonic()
        ttl_ms = max(1, int(self.ttl * 1000))
        try:
            if self.held:
                ok = bool(await self._extend(keys=[self.key], args=[self.token, ttl_ms]))
                if not ok:
                    log.warning("lost the lock %s", self.key)
            else:
                ok = bool(await self.redis.set(self.key, self.token, nx=True, px=ttl_ms))
                if ok:
                    log.info("acquired the lock %s", self.key)
        except (RedisError, OSError):
            log.exception("lock %s: Redis error", self.key)
            return self.held
        self._valid_until = started + self.ttl if ok else 0.0
        return ok

    async def keep(self, stop_event: asyncio.Event) -> None:
        """Hold the lock whenever possible until `stop_event` is set, then release it."""
        try:
            while not stop_event.is_set():
                held = await self.acquire_or_extend()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_event.wait(), self.ttl / 2 if held else self.ttl / 10)
        finally:
            await self.release()

    async def release(self) -> None:
        """Give the lock up if it is still ours (the token is compared in Redis)."""
        self._valid_until = 0.0
        try:
            await self._release(keys=[self.key], args=[self.token])
        except (RedisError, OSError):
            log.exception("lock %s: could not release it; it expires in at most %ss", self.key, self.ttl)
