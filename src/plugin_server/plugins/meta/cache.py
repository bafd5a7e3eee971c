"""`meta.cache`: Redis, shared by every config of one plugin within one team.

Keys are `@plugin/<plugin_id>/<team_id>/<key>`, as in the original, so a cache survives the switch
between servers. Values are JSON unless `json_serialize=False`; lists hold strings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from plugin_server.jsvalues import check_int, check_key, check_number, js_string
from plugin_server.plugins.meta.errors import IllegalOperationError

LPUSH_MAX_ELEMENTS = 1000


@contextmanager
def _plugin_mistakes(call: str) -> Iterator[None]:
    """Redis refusing an operation on the plugin's data (wrong type, not an integer) is the plugin's error."""
    try:
        yield
    except ResponseError as error:
        raise ValueError(f"{call}: {error}") from None


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class PluginCache:
    __slots__ = ("_prefix", "_redis")

    def __init__(self, redis: aioredis.Redis, *, plugin_id: int, team_id: int) -> None:
        self._redis = redis
        self._prefix = f"@plugin/{plugin_id}/{team_id}/"

    def _key(self, key: object, call: str) -> str:
        return self._prefix + check_key(key, call)

    async def set(
        self, key: str, value: Any, ttl_seconds: float | None = None, json_serialize: bool = True
    ) -> None:
        """Store `value`, for `ttl_seconds` when given (0 or None: no expiry, as in the original)."""
        full_key = self._key(key, "cache.set")
        if json_serialize:
            data: str | int | float = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
        elif isinstance(value, str) or (isinstance(value, int | float) and not isinstance(value, bool)):
            data = value
        else:
            raise TypeError("cache.set with jsonSerialize false expects a string or a number value")
        if not ttl_seconds:
            await self._redis.set(full_key, data)
            return
        ttl = check_number(ttl_seconds, "cache.set expects a positive number of seconds for the ttl")
        if ttl < 0:
            raise ValueError("cache.set expects a positive number of seconds for the ttl")
        if isinstance(ttl, float) and not ttl.is_integer():
            await self._redis.set(full_key, data, px=max(1, round(ttl * 1000)))
        else:
            await self._redis.set(full_key, data, ex=int(ttl))

    async def get(self, key: str, default: Any = None, json_serialize: bool = True) -> Any:
        """The stored value, or `default` when the key is missing or does not hold valid JSON."""
        full_key = self._key(key, "cache.get")
        with _plugin_mistakes("cache.get"):
            value = await self._redis.get(full_key)
        if value is None:
            return default
        if not json_serialize:
            return _text(value)
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return default

    async def incr(self, key: str, by: int = 1) -> int:
        full_key = self._key(key, "cache.incr")
        amount = check_int(by, "cache.incr expects an integer to increment by")
        with _plugin_mistakes("cache.incr"):
            return int(await self._redis.incrby(full_key, amount))

    async def expire(self, key: str, ttl_seconds: float) -> bool:
        """Let the key expire in `ttl_seconds` (0 or less deletes it); False when there is no such key."""
        full_key = self._key(key, "cache.expire")
        ttl = check_number(ttl_seconds, "cache.expire expects a number of seconds")
        if isinstance(ttl, float) and not ttl.is_integer():
            return bool(await self._redis.pexpire(full_key, round(ttl * 1000)))
        return bool(await self._redis.expire(full_key, int(ttl)))

    async def lpush(self, key: str, value: str | list[Any]) -> int:
        """Push a string or a list of strings (numbers are turned into strings); the list's new length."""
        full_key = self._key(key, "cache.lpush")
        if isinstance(value, str):
            elements = [value]
        elif isinstance(value, list | tuple):
            if len(value) > LPUSH_MAX_ELEMENTS:
                raise IllegalOperationError(
                    f"Too many elements in array for cache.lpush. Maximum: {LPUSH_MAX_ELEMENTS}"
                )
            if not value:
                raise ValueError("cache.lpush expects at least one element")
            if not all(isinstance(element, str | int | float) for element in value):
                raise TypeError("cache.lpush expects a string value or an array of strings")
            elements = [js_string(element) for element in value]
        else:
            raise TypeError("cache.lpush expects a string value or an array of strings")
        with _plugin_mistakes("cache.lpush"):
            return int(await self._redis.lpush(full_key, *elements))

    async def lrange(self, key: str, start: int, end: int) -> list[str]:
        full_key = self._key(key, "cache.lrange")
        message = "cache.lrange expects a number for the start and end indexes"
        first, last = check_int(start, message), check_int(end, message)
        with _plugin_mistakes("cache.lrange"):
            return [_text(element) for element in await self._redis.lrange(full_key, first, last)]

    async def llen(self, key: str) -> int:
        full_key = self._key(key, "cache.llen")
        with _plugin_mistakes("cache.llen"):
            return int(await self._redis.llen(full_key))

    async def lrem(self, key: str, count: int, value: str | float) -> int:
        """Remove `count` occurrences of `value` (all when 0, from the tail when negative); how many went."""
        full_key = self._key(key, "cache.lrem")
        how_many = check_int(count, 'cache.lrem expects a number for the "count" argument')
        if not isinstance(value, str | int | float):
            raise TypeError("cache.lrem expects a string value")
        with _plugin_mistakes("cache.lrem"):
            return int(await self._redis.lrem(full_key, how_many, js_string(value)))

    async def lpop(self, key: str, count: int = 1) -> list[str]:
        """Pop up to `count` elements from the head; an empty list when there is no such key."""
        full_key = self._key(key, "cache.lpop")
        how_many = check_int(count, 'cache.lpop expects a number for the "count" argument')
        if how_many < 1:
            raise ValueError('cache.lpop expects a positive "count"')
        with _plugin_mistakes("cache.lpop"):
            popped = await self._redis.lpop(full_key, how_many)
        return [_text(element) for element in popped] if isinstance(popped, list) else []
