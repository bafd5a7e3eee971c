"""Time-ordered event uuids, and the uuid derived from a queue message's id."""

import uuid

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


def test_a_random_id_is_a_version_4_uuid() -> None:
    ids = {random_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for text in list(ids)[:1_000]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
