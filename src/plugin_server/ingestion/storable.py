"""What an event may hold so that it can be queued and stored, and how client values are made to fit.

Postgres refuses a NUL character in text and jsonb; UTF-8 encoders (orjson, Postgres) refuse a lone
UTF-16 surrogate, which JSON can spell (`"\\ud800"`); orjson refuses to write values nested deeper
than 254 levels. PostHog's capture stripped NULs and truncated what it could; so do we: strings and
keys from clients are scrubbed (NULs removed, lone surrogates replaced by U+FFFD), and nesting past
MAX_JSON_DEPTH is refused at the door.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MAX_DISTINCT_ID_LENGTH = 200
# Levels of nesting in one request payload. orjson writes at most 254, and a queued event sits about
# six levels deep in its message (kombu envelope, task arguments, plugin batches), so 200 leaves room.
MAX_JSON_DEPTH = 200

# A NUL or a surrogate can only appear in JSON text as an escape (raw NUL bytes and raw surrogates
# are invalid JSON/UTF-8), so text without these escapes needs no scrubbing.
_SCRUB_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


_CONTAINERS = (dict, list)

# A backslash looked for in bytes by its value: `b"\\" in data` first tries `b"\\"` as an int, and making
# and clearing that TypeError costs six times the memchr itself (about 120 ns a message).
BACKSLASH = ord("\\")


class TooDeep(ValueError):
    """A JSON value nested past MAX_JSON_DEPTH."""


def may_need_scrubbing(json_text: bytes) -> bool:
    """Whether JSON text spells a NUL or a surrogate (a quick test; `scrub` then does the work)."""
    # a single-byte search is a memchr; most messages hold no backslash at all
    return BACKSLASH in json_text and _SCRUB_ESCAPE.search(json_text) is not None


def scrub_text(text: str) -> str:
    """`text` without NUL characters, and with U+FFFD for each lone surrogate (pairs are joined)."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if _LONE_SURROGATE.search(text):
        # A pair that JSON spelled as two escapes becomes its character; what is left alone is replaced.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def scrub(value: Any) -> Any:
    """A copy of a JSON value with every string and key scrubbed (see `scrub_text`)."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {scrub_text(key): scrub(item) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub(item) for item in value]
    return value


def check_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise TooDeep when objects and arrays nest more than `limit` levels."""
    if limit < 1:
        raise TooDeep(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
    kind = type(value)
    children: Iterable[Any] = value.values() if kind is dict else value if kind is list else ()
    for child in children:
        if type(child) in _CONTAINERS:
            check_depth(child, limit - 1)


def may_nest_too_deep(json_text: bytes) -> bool:
    """Whether JSON text has enough brackets to nest past MAX_JSON_DEPTH (a quick test; most
    requests have fewer brackets in all, and then need no walk)."""
    return json_text.count(b"{") + json_text.count(b"[") > MAX_JSON_DEPTH


def unstorable_text(text: str) -> str | None:
    """Why a string cannot be stored as it is, or None."""
    if "\x00" in text:
        return "holds a NUL character"
    if _LONE_SURROGATE.search(text):
        return "holds a lone UTF-16 surrogate"
    return None


def int_like_orjson(text: str) -> int | float:
    """An integer as orjson reads it: past 64 bits a float (orjson, and so the queue's encoders and
    the sinks, take no bigger int). For `json.loads(parse_int=...)`."""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(value)
