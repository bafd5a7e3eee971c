"""A cache for parsing the short texts that many events share (a request's `now` and `sent_at`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

MAX_CACHED_LENGTH = 64  # longer texts are parsed every time, so a client's long values cannot fill memory
CACHED_TEXTS = 4_096


def cache_short_texts(parse: Callable[[Any], T]) -> Callable[[Any], T]:
    """`parse`, remembering its answers for recent short texts (the answers must be immutable). Any
    other value (a long text, a number, None) is parsed every time, so `parse` takes what its callers
    may pass, and they need no type test of their own (a call less for every event)."""
    cached = functools.lru_cache(maxsize=CACHED_TEXTS)(parse)

    @functools.wraps(parse)
    def parse_value(value: Any) -> T:
        return cached(value) if type(value) is str and len(value) <= MAX_CACHED_LENGTH else parse(value)

    return parse_value
