"""The `Event` message of events.proto, built with the protobuf runtime's descriptor API (no generated
code), and its length-delimited encoding."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_Field = descriptor_pb2.FieldDescriptorProto

# (name, number, type) of each field, as events.proto declares them.
EVENT_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("uuid", 1, _Field.TYPE_STRING),
    ("event", 2, _Field.TYPE_STRING),
    ("properties", 3, _Field.TYPE_STRING),
    ("timestamp", 4, _Field.TYPE_STRING),
    ("team_id", 5, _Field.TYPE_UINT64),
    ("distinct_id", 6, _Field.TYPE_STRING),
    ("created_at", 7, _Field.TYPE_STRING),
    ("elements_chain", 8, _Field.TYPE_STRING),
)


def _event_class() -> Any:
    file = descriptor_pb2.FileDescriptorProto(name="events.proto", syntax="proto3")
    message = file.message_type.add(name="Event")
    for name, number, type_ in EVENT_FIELDS:
        message.field.add(name=name, number=number, type=type_, label=_Field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("Event"))


Event = _event_class()


def varint(number: int) -> bytes:
    """`number` as a protobuf base-128 varint."""
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def delimited(message: Any) -> bytes:
    """The message prefixed with its length, as protobufjs's encodeDelimited wrote it."""
    body: bytes = message.SerializeToString()
    return varint(len(body)) + body
