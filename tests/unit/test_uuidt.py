"""Time-ordered event uuids, and the uuid derived from a queue message's id."""

import hashlib
import random
import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugin_server.ingestion._uuid_text import is_uuid_text, uuidt_text
from plugin_server.ingestion.uuidt import random_id, uuidt, uuidt_for_message


def test_a_new_uuid_is_version_7_with_the_time_first() -> None:
    for _ in range(1_000):
        text = uuidt(1638093600000)
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
        assert parsed.int >> 80 == 1638093600000
    assert len({uuidt(1638093600000) for _ in range(1_000)}) == 1_000


def test_a_message_id_always_gives_the_same_uuid() -> None:
    # Pinned: a message redelivered after an upgrade must get the uuid it got before, or it is stored twice.
    assert uuidt_for_message(1638093600000, "task-1") == "017d65fc-b500-7259-9bdb-5b7908e547b7"
    assert uuidt_for_message(1638093600000, "task-2") != uuidt_for_message(1638093600000, "task-1")
    assert uuid.UUID(uuidt_for_message(1638093600001, "task-1")).int >> 80 == 1638093600001


@given(st.text(max_size=600), st.integers(-(2**70), 2**70))
def test_a_message_uuid_is_blake2b_of_its_id(message_id: str, unix_ms: int) -> None:
    """BLAKE2b in C (one block or several, any UTF-8) gives hashlib's digest, so uuids stay as they were."""
    expected = uuidt_text(unix_ms, hashlib.blake2b(message_id.encode(), digest_size=10).digest())
    assert uuidt_for_message(unix_ms, message_id) == expected


@pytest.mark.parametrize("size", [0, 1, 127, 128, 129, 255, 256, 257, 1000])
def test_a_message_uuid_at_block_edges(size: int) -> None:
    message_id = "é" * (size // 2) + "x" * (size % 2)  # `size` bytes of UTF-8
    expected = uuidt_text(7, hashlib.blake2b(message_id.encode(), digest_size=10).digest())
    assert uuidt_for_message(7, message_id) == expected


def test_a_message_uuid_refuses_what_encode_refuses() -> None:
    with pytest.raises(UnicodeEncodeError):
        uuidt_for_message(1, "lone \ud800")
    with pytest.raises(TypeError):
        uuidt_for_message(1, b"task-1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        uuidt_for_message("1", "task-1")  # type: ignore[arg-type]


def test_a_random_id_is_a_version_4_uuid() -> None:
    ids = {random_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for text in list(ids)[:1_000]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)


def _reference_text(unix_ms: int, tail: bytes) -> str:
    """The uuid's text by the uuid module: 48 bits of time, 80 of the tail, version 7, RFC 4122."""
    value = ((unix_ms & 0xFFFF_FFFF_FFFF) << 80) | int.from_bytes(tail[:10], "big")
    value = (value & ~(0xF << 76) & ~(0x3 << 62)) | (0x7 << 76) | (0x2 << 62)  # version 7, RFC 4122
    return str(uuid.UUID(int=value))


def test_the_compiled_text_matches_the_uuid_module() -> None:
    rng = random.Random(15)
    times = [0, 1, 2**48 - 1, 2**48, -1, -(2**60), 2**64 + 5, 2**100 + 3, 1638093600000]
    times += [rng.randrange(-(2**70), 2**70) for _ in range(2_000)]
    for unix_ms in times:
        tail = rng.randbytes(rng.choice([10, 16, 32]))
        assert uuidt_text(unix_ms, tail) == _reference_text(unix_ms, tail), (unix_ms, tail)


def test_the_compiled_text_refuses_what_it_cannot_make() -> None:
    with pytest.raises(ValueError):
        uuidt_text(1, b"short")
    with pytest.raises(TypeError):
        uuidt_text("1", b"0123456789")  # type: ignore[arg-type]


UUID_PATTERN = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
HEX_DIGITS = "0123456789abcdefABCDEF"
DASHES = (8, 13, 18, 23)


@st.composite
def uuid_like(draw: st.DrawFn) -> str:
    """8-4-4-4-12 hex digits of either case, then maybe one character changed (to a dash, a letter past
    f, a non-ASCII digit or letter, a space), one cut off or one more."""
    chars = ["-" if at in DASHES else draw(st.sampled_from(HEX_DIGITS)) for at in range(36)]
    change = draw(st.sampled_from(["none", "replace", "cut", "add"]))
    if change == "replace":
        chars[draw(st.integers(0, 35))] = draw(st.sampled_from(["-", "g", "G", "\u00e9", "\u0660", " ", "x"]))
    elif change == "cut":
        del chars[draw(st.integers(0, 35))]
    elif change == "add":
        chars.insert(draw(st.integers(0, 36)), draw(st.sampled_from(HEX_DIGITS + "-")))
    return "".join(chars)


@given(st.one_of(uuid_like(), st.text(max_size=40)))
def test_is_uuid_text_is_the_pattern(text: str) -> None:
    assert is_uuid_text(text) is (UUID_PATTERN.fullmatch(text) is not None)


@pytest.mark.parametrize("value", [None, 5, b"01a2471c-7bdb-7fb8-8efe-4916e6faff10", ["x"]])
def test_is_uuid_text_of_what_is_not_text_is_false(value: object) -> None:
    assert is_uuid_text(value) is False
