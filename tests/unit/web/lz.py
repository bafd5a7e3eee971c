"""lz-string base64 as posthog-js produces it (the JS library compresses UTF-16 code units)."""

from __future__ import annotations

from lzstring import LZString


def lz64(text: str) -> str:
    """The Python lzstring port works on code points: feed it UTF-16 code units, like JavaScript."""
    raw = text.encode("utf-16-le")
    units = "".join(chr(int.from_bytes(raw[i : i + 2], "little")) for i in range(0, len(raw), 2))
    compressed: str = LZString().compressToBase64(units)
    return compressed
