"""The protobuf message the server builds is the one events.proto declares, field for field."""

from __future__ import annotations

import re
from importlib import resources

from google.protobuf.descriptor import FieldDescriptor

from plugin_server.sinks.kafka.protobuf import EVENT_FIELDS, Event, delimited, varint

_TYPES = {"string": FieldDescriptor.TYPE_STRING, "uint64": FieldDescriptor.TYPE_UINT64}


def declared_fields() -> list[tuple[str, int, int]]:
    text = (resources.files("plugin_server.sinks.kafka") / "events.proto").read_text()
    body = re.search(r"message Event \{(.*?)\}", text, re.S)
    assert body is not None
    fields = re.findall(r"^\s*([\w.]+)\s+(\w+)\s*=\s*(\d+);", body[1], re.M)
    return [(name, int(number), _TYPES[type_]) for type_, name, number in fields]


def test_the_runtime_message_has_the_fields_of_events_proto() -> None:
    built = [(field.name, field.number, field.type) for field in Event.DESCRIPTOR.fields]
    assert built == declared_fields()
    assert list(EVENT_FIELDS) == declared_fields()


def test_delimited_messages_carry_their_length_first() -> None:
    message = Event(uuid="u" * 200, team_id=2**40, event="$pageview")
    body = message.SerializeToString()
    assert delimited(message) == varint(len(body)) + body
    assert varint(len(body))[0] & 0x80  # over 127 bytes: a two-byte length
    assert Event.FromString(body).team_id == 2**40
    assert [varint(n) for n in (0, 1, 127, 128, 300)] == [b"\x00", b"\x01", b"\x7f", b"\x80\x01", b"\xac\x02"]
