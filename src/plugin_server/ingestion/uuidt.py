"""UUIDT: PostHog's time-ordered UUIDs (48 bits of unix milliseconds, then 80 bits that vary).

`uuidt_for_message` makes the uuid of an event that arrived without one from the id of the queue
message that carried it, so that a message delivered twice yields the same event uuid and is
stored once.
"""

from __future__ import annotations

import os
import random
import time

# uuidt_for_message(unix_ms, message_id): a time-ordered uuid that is always the same for the same message
# id and time: `uuidt_text(unix_ms, hashlib.blake2b(message_id.encode(), digest_size=10).digest())`,
# computed in C (_uuid_text.c; hashlib's object took 0.5 µs of the 0.6 for every Celery event).
from plugin_server.ingestion._uuid_text import uuidt_for_message as uuidt_for_message
from plugin_server.ingestion._uuid_text import uuidt_text

_VERSION_4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_4_SET = (0x4000 << 64) | (0x8000 << 48)


def dashed(hex_digits: str) -> str:
    """32 hex digits in a uuid's 8-4-4-4-12 form."""
    return f"{hex_digits[:8]}-{hex_digits[8:12]}-{hex_digits[12:16]}-{hex_digits[16:20]}-{hex_digits[20:]}"


def random_id() -> str:
    """A random version-4 uuid from Python's generator, for ids that need only be unique (a Celery task id
    and delivery tag): `uuid.uuid4()` makes a system call each time, twice for every captured event."""
    return dashed("%032x" % ((random.getrandbits(128) & _VERSION_4_CLEAR) | _VERSION_4_SET))


def uuidt(unix_ms: int | None = None) -> str:
    """A new time-ordered uuid."""
    return uuidt_text(int(time.time() * 1000) if unix_ms is None else unix_ms, os.urandom(10))
