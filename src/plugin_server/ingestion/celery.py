"""The Celery task protocol as kombu's Redis transport stores it, both ways.

A message on the list is a JSON envelope whose `body` is base64 of the JSON task body: protocol v2
(`headers.task` set, body `[args, kwargs, embed]`) or v1 (body `{task, id, args, kwargs, ...}`).
Only what the original accepted is accepted (JSON, utf-8, base64); anything else is a
`MalformedMessage` whose text says why, so the consumer can dead-letter it and go on.
"""

from __future__ import annotations

import binascii
import itertools
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson
import pybase64

from plugin_server.ingestion._celery_envelope import read_envelope
from plugin_server.ingestion._task_event import raw_event_of_body
from plugin_server.ingestion.message_fields import (
    MalformedMessage,
    distinct_id_text,
    raw_event,
    read_json,
    unix_ms,
)
from plugin_server.ingestion.types import RawEvent
from plugin_server.ingestion.uuidt import random_id, uuidt, uuidt_for_message

PROCESS_EVENT_TASK = "posthog.tasks.process_event.process_event_with_plugins"
PLUGIN_JOB_TASK = "posthog.tasks.plugins.plugin_job"
_PROCESS_EVENT_TASK_BYTES = PROCESS_EVENT_TASK.encode()

_EVENT_ARGUMENTS = ("distinct_id", "ip", "site_url", "data", "team_id", "now", "sent_at")
_REQUIRED_EVENT_ARGUMENTS = _EVENT_ARGUMENTS[:-1]


class CeleryTask(NamedTuple):
    """One decoded task (a named tuple: made once per message, and a frozen dataclass costs more)."""

    name: str
    id: str | None
    args: list[Any]
    kwargs: dict[str, Any]


def decode_message(raw: bytes | str) -> CeleryTask:
    """The task carried by one kombu Redis envelope (Celery task protocol 1 or 2)."""
    common = _common_body(raw)
    return decode_checked(raw) if common is None else _protocol_2_task(PROCESS_EVENT_TASK, *common)


def event_or_task(raw: bytes | str) -> RawEvent | CeleryTask:
    """The raw event of a common `process_event_with_plugins` message, as `event_from_task` makes it
    but in C (_task_event.c: the same checks, the same event); the task of any other message."""
    common = _common_body(raw)
    if common is None:
        return decode_checked(raw)
    task_id, body = common
    event = raw_event_of_body(body)
    return (
        _protocol_2_task(PROCESS_EVENT_TASK, task_id, body) if event is None else _with_uuid(event, task_id)
    )


def _common_body(raw: bytes | str) -> tuple[str | None, Any] | None:
    """The task id and parsed body of the common envelope, read in C (_celery_envelope.c) with the
    checked path's checks; None for any other envelope."""
    if isinstance(raw, bytes):
        read = read_envelope(raw, _PROCESS_EVENT_TASK_BYTES)
        if read is not None:
            task_id, body = read
            return task_id, read_json(body, "body")
    return None


def decode_checked(raw: bytes | str) -> CeleryTask:
    """`decode_message` for any envelope, checked field by field in Python (the errors' words)."""
    envelope = read_json(raw, "message")
    if not isinstance(envelope, dict):
        raise MalformedMessage(f"message is a JSON {type(envelope).__name__}, not an object")
    content_type = envelope.get("content-type")
    if content_type != "application/json":
        raise MalformedMessage(f"unsupported content type {content_type!r} (only 'application/json')")
    content_encoding = envelope.get("content-encoding")
    if content_encoding != "utf-8":
        raise MalformedMessage(f"unsupported content encoding {content_encoding!r} (only 'utf-8')")
    properties = envelope.get("properties")
    if not isinstance(properties, dict):
        raise MalformedMessage("message has no 'properties' object")
    body_encoding = properties.get("body_encoding")
    if body_encoding != "base64":
        raise MalformedMessage(f"unsupported body encoding {body_encoding!r} (only 'base64')")
    headers = envelope.get("headers") or {}
    if not isinstance(headers, dict):
        raise MalformedMessage("message 'headers' is not an object")
    if headers.get("compression"):
        raise MalformedMessage(f"compressed bodies ({headers['compression']!r}) are not supported")
    encoded_body = envelope.get("body")
    if not isinstance(encoded_body, str):
        raise MalformedMessage("message 'body' is not a string")
    try:
        # strict: only the base64 alphabet, correctly padded. pybase64 decodes with SIMD, about 3.5 times
        # as fast as binascii here.
        decoded_body = pybase64.b64decode(encoded_body, validate=True)
    except (binascii.Error, ValueError) as error:
        raise MalformedMessage(f"body is not valid base64 ({error})") from None
    body = read_json(decoded_body, "body")

    task_name = headers.get("task")
    if task_name:  # protocol 2; the original too falls back to v1 when headers.task is empty
        return _protocol_2_task(task_name, headers.get("id"), body)
    if not isinstance(body, dict):
        raise MalformedMessage("no task name: neither headers.task (protocol 2) nor a protocol 1 body")
    task_name = body.get("task")
    if not task_name:
        raise MalformedMessage("protocol 1 body has no 'task'")
    return _task(task_name, body.get("id"), body.get("args"), body.get("kwargs"))


def _protocol_2_task(task_name: Any, task_id: Any, body: Any) -> CeleryTask:
    if not isinstance(body, list) or len(body) != 3:
        raise MalformedMessage("protocol 2 body is not [args, kwargs, embed]")
    return _task(task_name, task_id, body[0], body[1])


def _task(task_name: Any, task_id: Any, args: Any, kwargs: Any) -> CeleryTask:
    if not isinstance(task_name, str):
        raise MalformedMessage(f"task name is a {type(task_name).__name__}, not a string")
    args = [] if args is None else args
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(args, list):
        raise MalformedMessage(f"task args is a {type(args).__name__}, not a list")
    if not isinstance(kwargs, dict):
        raise MalformedMessage(f"task kwargs is a {type(kwargs).__name__}, not an object")
    return CeleryTask(task_name, None if task_id is None else str(task_id), args, kwargs)


def event_from_task(task: CeleryTask) -> RawEvent:
    """The raw event of a `process_event_with_plugins` task: its arguments and `data`, the
    arguments winning for the server's fields (see `message_fields`). An event without a uuid gets
    one derived from the task id and `now`, so a redelivered message keeps its uuid.
    """
    if task.name != PROCESS_EVENT_TASK:
        raise MalformedMessage(f"task {task.name!r} does not carry an event")
    arguments = _event_arguments(task)
    data = arguments["data"]
    if isinstance(data, str):
        data = read_json(data, "event data")
    if not isinstance(data, dict):
        raise MalformedMessage(f"event data is a {type(data).__name__}, not an object")
    event = raw_event(arguments, data)
    event["distinct_id"] = distinct_id_text(event["distinct_id"])
    team_id = event["team_id"]
    if not isinstance(team_id, int) or isinstance(team_id, bool):
        raise MalformedMessage(f"team_id {team_id!r} is not an integer")
    return _with_uuid(event, task.id)


def _with_uuid(event: RawEvent, task_id: str | None) -> RawEvent:
    if not event["uuid"]:  # a null or empty uuid in data is no uuid
        if task_id is None:
            event["uuid"] = uuidt()
        else:
            event["uuid"] = uuidt_for_message(unix_ms(event["now"]), task_id)
    return event


# The envelope of `encode_task`, its keys in the order kombu's Redis transport writes them; the fields
# that vary are filled in as JSON (the body is base64, the delivery tag a uuid: both need no escaping).
_ENVELOPE = (
    b'{"body":"%b","content-type":"application/json","content-encoding":"utf-8",'
    b'"headers":{"lang":"py","task":%b,"id":%b},'
    b'"properties":{"body_encoding":"base64","delivery_info":{"exchange":"","routing_key":%b},'
    b'"delivery_mode":2,"delivery_tag":"%b","correlationId":%b,"replyTo":""}}'
)


class _DeliveryTags:
    """Delivery tags for `encode_task`, unique like kombu's uuid4 ones: a random uuid's first 80 bits
    per process and a count after them, rather than fresh random bits for each (~0.5 µs less for each
    captured event). A forked child takes a prefix of its own."""

    def __init__(self) -> None:
        self._renew()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._prefix = random_id()[:24]  # "xxxxxxxx-xxxx-4xxx-yxxx-": the last group is the count
        self._count = itertools.count()

    def next(self) -> bytes:
        return f"{self._prefix}{next(self._count):012x}".encode("ascii")


_delivery_tags = _DeliveryTags()


def encode_task(
    name: str,
    args: Sequence[Any],
    kwargs: dict[str, Any] | None = None,
    *,
    queue: str,
    task_id: str | None = None,
) -> bytes:
    """A protocol 2 envelope to LPUSH on `queue`, shaped like the original's Celery client sent it."""
    return TaskEncoder(name, queue).encode(args, kwargs, task_id)


class TaskEncoder:
    """`encode_task` for one task name and queue, the envelope's fixed bytes (the name and queue among
    them) made once: capture encodes one envelope per event, all of them the same task on one queue.

    Filled into a template rather than built as a dict and encoded."""

    def __init__(self, name: str, queue: str) -> None:
        fixed = (orjson.dumps(value).replace(b"%", b"%%") for value in (name, queue))
        self._template = _ENVELOPE % (b"%b", next(fixed), b"%b", next(fixed), b"%b", b"%b")

    def encode(
        self, args: Sequence[Any], kwargs: dict[str, Any] | None = None, task_id: str | None = None
    ) -> bytes:
        task_id_json = orjson.dumps(task_id or random_id())
        body = pybase64.b64encode(orjson.dumps([args, kwargs or {}, {}]))
        return self._template % (body, task_id_json, _delivery_tags.next(), task_id_json)


def _event_arguments(task: CeleryTask) -> dict[str, Any]:
    """The task's arguments by name, from positions and/or keywords (unknown keywords are ignored).

    The original appended the kwargs dict as one more positional argument, so without `sent_at` the
    kwargs landed in the sent_at slot; here a missing `sent_at` is None.
    """
    if len(task.args) > len(_EVENT_ARGUMENTS):
        raise MalformedMessage(
            f"{PROCESS_EVENT_TASK} takes at most {len(_EVENT_ARGUMENTS)} arguments, got {len(task.args)}"
        )
    arguments = dict(zip(_EVENT_ARGUMENTS, task.args, strict=False))
    if len(arguments) == len(_EVENT_ARGUMENTS) and not task.kwargs:
        return arguments  # the way capture sends them: all seven by position
    if task.kwargs:
        for name in _EVENT_ARGUMENTS:
            if name in task.kwargs:
                if name in arguments:
                    raise MalformedMessage(f"argument {name!r} given both by position and by name")
                arguments[name] = task.kwargs[name]
    missing = [name for name in _REQUIRED_EVENT_ARGUMENTS if name not in arguments]
    if missing:
        raise MalformedMessage(f"{PROCESS_EVENT_TASK} is missing {', '.join(missing)}")
    arguments.setdefault("sent_at", None)
    return arguments
