"""lz-string base64 as posthog-js produces it (the JS library compresses UTF-16 code units)."""

from __future__ import annotations

from lzstring import LZString


def lz64(text: str) -> str:
    """The Python lzstring port works on code points: feed it UTF-16 code units, like JavaScript."""
    raw = text.encode("utf-16-le")
    units = "".join(chr(int.from_bytes(raw[i : i + 2], "little")) for i in range(0, len(raw), 2))
    compressed: str = LZString().compressToBase64(units)
    return compressed


def lz64_bomb(codes: int) -> str:
    """lz-string base64 of one character repeated about codes²/2 times, written code by code: each
    code names the dictionary entry about to be made (the previous one plus a character)."""
    return _lz64_of_codes([(0, "a")] + [(None, "")] * codes)


def lz64_literals(text: str) -> str:
    """lz-string base64 of `text` (code points below 256) that spells every character as a new
    literal: valid, and the slowest kind of stream to decode for its output."""
    return _lz64_of_codes([(0, char) for char in text])


def _lz64_of_codes(codes: list[tuple[int | None, str]]) -> str:
    """The stream of these codes: (0, char) a literal, (None, _) the entry about to be made."""
    bits = []
    size, width, enlarge_in = 3, 2, 2  # before the first character, as lz-string's decoder starts
    for index, (code, char) in enumerate(codes):
        written = size if code is None else code
        bits.append(format(written, f"0{width}b")[::-1])  # least significant bit first
        if code is not None:
            bits.append(format(ord(char), "08b")[::-1])
            if index:
                size, enlarge_in = size + 1, enlarge_in - 1
                if enlarge_in == 0:
                    enlarge_in, width = 1 << width, width + 1
        if index == 0:
            size, width, enlarge_in = 4, 3, 4
            continue
        size, enlarge_in = size + 1, enlarge_in - 1
        if enlarge_in == 0:
            enlarge_in, width = 1 << width, width + 1
    bits.append(format(2, f"0{width}b")[::-1])
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 6 + 6)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return "".join(alphabet[int(stream[i : i + 6], 2)] for i in range(0, len(stream), 6))
