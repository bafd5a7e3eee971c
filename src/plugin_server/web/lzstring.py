"""lz-string's `decompressFromBase64` (what posthog-js sends with `compression=lz64`), bounded.

The `lzstring` package decompresses without limits, and lz-string's output grows with the square of
its input (each dictionary entry is the previous one plus a character): a 74 KB body became 2 GB.
This decoder stops as soon as the output passes `max_chars` and when `deadline` (a `time.monotonic`
value) passes, so both memory and time are bounded while it runs. It reads the bit stream a code at a
time (a slice of a bit string) rather than a bit at a time.

The format: a stream of codes, least significant bit first, over base64 characters read most
significant bit first. Codes 0 and 1 bring a new 8- or 16-bit character into the dictionary, 2 ends
the stream, higher codes are dictionary entries; the code width grows as the dictionary does.
"""

from __future__ import annotations

import time

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_BITS = {char: format(index, "06b") for index, char in enumerate(_ALPHABET)}
_CHECK_EVERY = 1024  # codes between two looks at the clock


class OutputTooLarge(ValueError):
    """The decompressed text would pass the limit."""


def decompress_from_base64(text: str, max_chars: int, deadline: float) -> str:
    """The text lz-string compressed. Raises ValueError when `text` is not lz-string base64,
    OutputTooLarge past `max_chars`, TimeoutError past `deadline`."""
    try:
        bits = "".join([_BITS[char] for char in text])
    except KeyError as error:
        raise ValueError(f"{error.args[0]!r} is not a base64 character") from None
    end = len(bits)
    bits += "0" * 64  # lz-string reads zeros past the end before it notices (codes are < 48 bits)
    position = 0

    def read(width: int) -> int:
        nonlocal position
        chunk = bits[position : position + width]
        position += width
        return int(chunk[::-1], 2)

    first = read(2)
    if first == 2:
        return ""
    if first > 2:
        raise ValueError("the stream does not start with a character")
    previous = chr(read(8 if first == 0 else 16))
    dictionary: list[str] = ["", "", "", previous]
    output = [previous]
    size = 1
    width = 3
    enlarge_in = 4
    codes = 0
    while True:
        if position >= end:  # lz-string's `data.index > length`: it ran past the input
            raise ValueError("the stream ends without its end marker")
        code = read(width)
        if code < 2:
            dictionary.append(chr(read(8 if code == 0 else 16)))
            code = len(dictionary) - 1
            enlarge_in -= 1
        elif code == 2:
            return "".join(output)
        if enlarge_in == 0:
            enlarge_in = 1 << width
            width += 1
        if code < len(dictionary):
            entry = dictionary[code]
        elif code == len(dictionary):
            entry = previous + previous[0]
        else:
            raise ValueError(f"code {code} is not in the dictionary")
        size += len(entry)
        if size > max_chars:
            raise OutputTooLarge(f"more than {max_chars} characters")
        output.append(entry)
        dictionary.append(previous + entry[0])
        enlarge_in -= 1
        previous = entry
        if enlarge_in == 0:
            enlarge_in = 1 << width
            width += 1
        codes += 1
        if codes % _CHECK_EVERY == 0 and time.monotonic() > deadline:
            raise TimeoutError("decompressing took too long")
