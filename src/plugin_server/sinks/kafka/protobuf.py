"""The `Event` message of events.proto, built with the protobuf runtime's descriptor API (no generated
code), and its length-delimited encoding."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

_Field = descriptor_pb2.FieldDescriptorProto
_TIMESTAMP = ".google.protobuf.Timestamp"

# (name, number, type, message type name) of each field, as events.proto declares them.
EVENT_FIELDS: tuple[tuple[str, int, int, str], ...] = (
    ("uuid", 1, _Field.TYPE_STRING, ""),
    ("event", 2, _Field.TYPE_STRING, ""),
    ("properties", 3, _Field.TYPE_STRING, ""),
    ("timestamp", 4, _Field.TYPE_STRING, ""),
    ("team_id", 5, _Field.TYPE_UINT64, ""),
    ("distinct_id", 6, _Field.TYPE_STRING, ""),
    ("created_at", 7, _Field.TYPE_STRING, ""),
    ("elements_chain", 8, _Field.TYPE_STRING, ""),
    ("proto_created_at", 9, _Field.TYPE_MESSAGE, _TIMESTAMP),
    ("proto_timestamp", 10, _Field.TYPE_MESSAGE, _TIMESTAMP),
)


def _event_class() -> Any:
    file = descriptor_pb2.FileDescriptorProto(
        name="events.proto", syntax="proto3", dependency=["google/protobuf/timestamp.proto"]
    )
    message = file.message_type.add(name="Event")
    for name, number, type_, type_name in EVENT_FIELDS:
        field = message.field.add(name=name, number=number, type=type_, label=_Field.LABEL_OPTIONAL)
        if type_name:
            field.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
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
