"""A cache for parsing the short texts that many events share (a request's `now` and `sent_at`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

MAX_CACHED_LENGTH = 64  # longer texts are parsed every time, so a client's long values cannot fill memory
CACHED_TEXTS = 4_096


def cache_short_texts(parse: Callable[[str], T]) -> Callable[[str], T]:
    """`parse`, remembering its answers for recent short texts (the answers must be immutable)."""
    cached = functools.lru_cache(maxsize=CACHED_TEXTS)(parse)

    @functools.wraps(parse)
    def parse_text(text: str) -> T:
        return cached(text) if len(text) <= MAX_CACHED_LENGTH else parse(text)

    return parse_text
