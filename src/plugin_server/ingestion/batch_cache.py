"""A TTL cache for lookups made a batch at a time: the keys a batch misses are loaded in one call."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from typing import Generic, TypeVar

from cachetools import TTLCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Clock = Callable[[], float]


class BatchCache(Generic[K, V]):
    """`load(missing keys)` answers what exists; a key it leaves out gets `absent()` (also cached)."""

    def __init__(
        self,
        load: Callable[[list[K]], Awaitable[Mapping[K, V]]],
        absent: Callable[[], V],
        *,
        ttl: float,
        maxsize: int,
        clock: Clock = time.monotonic,
    ) -> None:
        self._load = load
        self._absent = absent
        self._cache: TTLCache[K, V] = TTLCache(maxsize=maxsize, ttl=ttl, timer=clock)

    async def get_many(self, keys: Iterable[K]) -> dict[K, V]:
        found: dict[K, V] = {}
        missing: list[K] = []
        for key in dict.fromkeys(keys):
            try:  # one lookup, so an entry cannot expire between a check and a read
                found[key] = self._cache[key]
            except KeyError:
                missing.append(key)
        if missing:
            loaded = await self._load(missing)
            for key in missing:
                value = loaded.get(key)
                found[key] = self._cache[key] = self._absent() if value is None else value
        return found

    def put(self, key: K, value: V) -> None:
        self._cache[key] = value

    def forget(self, keys: Iterable[K]) -> None:
        for key in keys:
            with contextlib.suppress(KeyError):  # an entry that expired meanwhile is gone as well
                del self._cache[key]
