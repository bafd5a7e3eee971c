"""RE2 regular expressions (via pyre2), as the original matched URL and property regexes.

RE2 runs in linear time and has no backreferences or lookaround: a pattern that needs them is invalid,
never handed to Python's `re` (pyre2 would fall back to it; this module turns that off). `\\d`, `\\w`
and `\\s` are ASCII, as in RE2 itself. Matching is unanchored (`RegExp.test`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import re2 as _re2

_re2.set_fallback_notification(_re2.FALLBACK_EXCEPTION)


class InvalidRegex(ValueError):
    """The pattern is not valid RE2."""


class Pattern(Protocol):
    def search(self, text: str) -> object | None: ...


def compile_re2(pattern: str) -> Pattern:
    compiled = _compile(pattern)
    if isinstance(compiled, str):
        raise InvalidRegex(compiled)
    return compiled


@lru_cache(maxsize=2048)
def _compile(pattern: str) -> Pattern | str:
    """The compiled pattern, or why it is invalid (cached too: an invalid pattern is not parsed again)."""
    try:
        compiled: Pattern = _re2.compile(pattern, _re2.ASCII)
    except Exception as error:  # re2's error type, or the fallback notice
        return f"invalid RE2 pattern {pattern!r}: {error}"
    return compiled


def re2_test(pattern: str, text: str) -> bool:
    """Whether `pattern` matches anywhere in `text`; InvalidRegex if it is not valid RE2."""
    return compile_re2(pattern).search(text) is not None
