"""The Celery message format, checked against what the real `celery` library puts in Redis."""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import given
from hypothesis import strategies as st
from kombu.connection import Connection

from plugin_server.ingestion.celery import (
    PLUGIN_JOB_TASK,
    PROCESS_EVENT_TASK,
    CeleryTask,
    decode_message,
    encode_task,
    event_from_task,
)
from plugin_server.ingestion.message_fields import MalformedMessage

QUEUE = "posthog-plugins"
NOW = "2021-03-04T05:06:07.890000+00:00"
NOW_MS = 1614834367890
EVENT_ARGS = [
    "user-1",
    "1.2.3.4",
    "http://localhost:8000",
    {"event": "$pageview", "properties": {"a": 1}},
    2,
    NOW,
    NOW,
]


@pytest.fixture(params=[1, 2], ids=["protocol1", "protocol2"])
def celery_app(request: pytest.FixtureRequest, redis_url: str, redis_client: redis.Redis) -> Iterator[Celery]:
    app = Celery(broker=redis_url)
    app.conf.task_protocol = request.param
    yield app
    app.close()


def pop(redis_client: redis.Redis) -> bytes:
    raw = redis_client.rpop(QUEUE)
    assert isinstance(raw, bytes)
    return raw


def envelope(content: Any, headers: Any = None, /, **fields: Any) -> bytes:
    """A kombu Redis envelope around `content` (JSON-encoded unless bytes), with `fields` overridden."""
    encoded = content if isinstance(content, bytes) else json.dumps(content).encode()
    message = {
        "body": base64.b64encode(encoded).decode(),
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {} if headers is None else headers,
        "properties": {"body_encoding": "base64", "delivery_tag": "x", "delivery_info": {}},
    }
    message.update({key.replace("_", "-"): value for key, value in fields.items()})
    return json.dumps(message).encode()


def v2(args: Any, kwargs: Any = None, task: Any = PROCESS_EVENT_TASK, task_id: str = "task-1") -> bytes:
    return envelope([args, {} if kwargs is None else kwargs, {}], {"lang": "py", "task": task, "id": task_id})


def task(*args: Any, task_id: str | None = "task-1", **kwargs: Any) -> CeleryTask:
    return CeleryTask(PROCESS_EVENT_TASK, task_id, list(args), kwargs)


# --- what the real celery library sends ---


def test_real_celery_task_decodes(celery_app: Celery, redis_client: redis.Redis) -> None:
    result = celery_app.send_task(PROCESS_EVENT_TASK, args=EVENT_ARGS, kwargs={"extra": True}, queue=QUEUE)

    decoded = decode_message(pop(redis_client))

    assert decoded == CeleryTask(PROCESS_EVENT_TASK, result.id, EVENT_ARGS, {"extra": True})
    event = event_from_task(decoded)
    assert event["distinct_id"] == "user-1"
    assert event["event"] == "$pageview"
    assert event["uuid"] == event_from_task(decode_message(v2(EVENT_ARGS, task_id=result.id)))["uuid"]


def test_real_celery_plugin_job_and_text_message(celery_app: Celery, redis_client: redis.Redis) -> None:
    args = [2, 15, "exportEvents", "start", {"dateFrom": "2021-01-01"}]
    celery_app.send_task(PLUGIN_JOB_TASK, args=args, queue=QUEUE)

    decoded = decode_message(pop(redis_client).decode())

    assert (decoded.name, decoded.args, decoded.kwargs) == (PLUGIN_JOB_TASK, args, {})


def test_real_celery_nan_is_read(celery_app: Celery, redis_client: redis.Redis) -> None:
    """Python's json writes NaN, which is not JSON; such an event is still read."""
    data = {"event": "e", "properties": {"value": float("nan")}}
    celery_app.send_task(PROCESS_EVENT_TASK, args=["d", None, None, data, 2, NOW], queue=QUEUE)

    event = event_from_task(decode_message(pop(redis_client)))

    assert math.isnan(event["properties"]["value"])
    assert event["sent_at"] is None


@pytest.mark.parametrize(
    ("options", "reason"),
    [({"serializer": "pickle"}, "content type"), ({"compression": "zlib"}, "compressed")],
)
def test_real_celery_unsupported_formats(
    celery_app: Celery, redis_client: redis.Redis, options: dict[str, str], reason: str
) -> None:
    celery_app.send_task(PROCESS_EVENT_TASK, args=EVENT_ARGS, queue=QUEUE, **options)

    with pytest.raises(MalformedMessage, match=reason):
        decode_message(pop(redis_client))


# --- what this server sends ---


def test_encode_task_has_the_original_clients_shape() -> None:
    raw = encode_task(PROCESS_EVENT_TASK, EVENT_ARGS, queue=QUEUE, task_id="abc")

    message = json.loads(raw)
    assert message["headers"] == {"lang": "py", "task": PROCESS_EVENT_TASK, "id": "abc"}
    assert message["content-type"] == "application/json"
    assert message["content-encoding"] == "utf-8"
    properties = message["properties"]
    uuid.UUID(properties.pop("delivery_tag"))
    assert properties == {
        "body_encoding": "base64",
        "delivery_info": {"exchange": "", "routing_key": QUEUE},
        "delivery_mode": 2,
        "correlationId": "abc",
        "replyTo": "",
    }
    assert json.loads(base64.b64decode(message["body"])) == [EVENT_ARGS, {}, {}]
    assert decode_message(raw) == CeleryTask(PROCESS_EVENT_TASK, "abc", EVENT_ARGS, {})


def test_encode_task_escapes_the_names_and_ids_it_is_given() -> None:
    """The template's filled-in fields are JSON: quotes and backslashes in them cannot break it."""
    raw = encode_task('t"\\', [1], queue='q"\\\n', task_id='a"b\\')

    message = json.loads(raw)
    assert message["properties"]["delivery_info"]["routing_key"] == 'q"\\\n'
    assert message["properties"]["correlationId"] == 'a"b\\'
    assert decode_message(raw) == CeleryTask('t"\\', 'a"b\\', [1], {})


def test_encode_task_keeps_percent_signs_in_the_names_it_is_given() -> None:
    """The name and queue are put into a %-template once: their own % signs stay as they are."""
    raw = encode_task("t%b%%s", [1], queue="q%b%", task_id="%b")

    message = json.loads(raw)
    assert message["properties"]["delivery_info"]["routing_key"] == "q%b%"
    assert decode_message(raw) == CeleryTask("t%b%%s", "%b", [1], {})


def delivery_tag(raw: bytes) -> str:
    tag: str = json.loads(raw)["properties"]["delivery_tag"]
    return tag


def test_delivery_tags_are_uuids_unique_in_a_process_and_across_a_fork() -> None:
    tags = [delivery_tag(encode_task("t", [], queue=QUEUE)) for _ in range(10_000)]
    assert len(set(tags)) == len(tags)
    assert all(str(uuid.UUID(tag)) == tag for tag in tags)
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # the child's next tag, then out without pytest's teardown
        os.write(writing, delivery_tag(encode_task("t", [], queue=QUEUE)).encode())
        os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as pipe:
        child_tag = pipe.read().decode()
    os.waitpid(child, 0)
    parent_tag = delivery_tag(encode_task("t", [], queue=QUEUE))
    assert str(uuid.UUID(child_tag)) == child_tag
    assert child_tag[:24] != parent_tag[:24]  # a prefix of its own, so the same count cannot repeat a tag


def test_encode_task_makes_a_task_id() -> None:
    first = decode_message(encode_task("t", [1], {"k": "v"}, queue=QUEUE))
    second = decode_message(encode_task("t", [1], {"k": "v"}, queue=QUEUE))

    assert (first.args, first.kwargs) == ([1], {"k": "v"})
    assert first.id and second.id and first.id != second.id


def test_kombu_consumes_encoded_task(redis_url: str, redis_client: redis.Redis) -> None:
    """A Python Celery worker (kombu) reads what encode_task writes."""
    redis_client.lpush(
        QUEUE, encode_task(PROCESS_EVENT_TASK, EVENT_ARGS, {"k": 1}, queue=QUEUE, task_id="t-1")
    )

    with Connection(redis_url) as connection, connection.SimpleQueue(QUEUE) as queue:  # type: ignore[no-untyped-call]
        message = queue.get(timeout=2)
        message.ack()

    assert message.headers["task"] == PROCESS_EVENT_TASK
    assert message.headers["id"] == "t-1"
    assert message.decode() == [EVENT_ARGS, {"k": 1}, {}]


# --- envelopes ---


def test_protocol1_tolerates_null_args_and_kwargs() -> None:
    body = {"task": PLUGIN_JOB_TASK, "id": 7, "args": None, "kwargs": None}

    assert decode_message(envelope(body)) == CeleryTask(PLUGIN_JOB_TASK, "7", [], {})


def test_missing_headers_mean_protocol1() -> None:
    raw = json.loads(envelope({"task": "t", "args": [1]}))
    del raw["headers"]

    assert decode_message(json.dumps(raw)) == CeleryTask("t", None, [1], {})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "message is not valid JSON"),
        (b"\xff\xfe{}", "message is not valid JSON"),
        (b"[1, 2]", "JSON list, not an object"),
        (envelope([[], {}, {}], content_type="application/x-python-serialize"), "unsupported content type"),
        (envelope([[], {}, {}], content_type=None), "unsupported content type None"),
        (envelope([[], {}, {}], content_encoding="binary"), "unsupported content encoding 'binary'"),
        (envelope([[], {}, {}], properties=None), "no 'properties'"),
        (envelope([[], {}, {}], properties={"body_encoding": "plain"}), "unsupported body encoding 'plain'"),
        (envelope([[], {}, {}], properties={}), "unsupported body encoding None"),
        (envelope([[], {}, {}], headers=["task"]), "'headers' is not an object"),
        (envelope([[], {}, {}], body=123), "'body' is not a string"),
        (envelope([[], {}, {}], body="not*base64"), "not valid base64"),
        (envelope([[], {}, {}], body="YQ"), "not valid base64"),
        (envelope([[], {}, {}], body="W10=\n"), "not valid base64"),  # kombu writes no line breaks
        (envelope([[], {}, {}], body="W1 0="), "not valid base64"),
        (envelope([[], {}, {}], body="W10=="), "not valid base64"),  # excess padding
        (envelope([[], {}, {}], body="W10é"), "not valid base64"),
        (envelope([[], {}, {}], body="W10\u0000"), "not valid base64"),
        (envelope(b"{broken"), "body is not valid JSON"),
        (
            envelope({"task": "t", "args": []}, {"task": "t"}),
            r"protocol 2 body is not \[args, kwargs, embed\]",
        ),
        (envelope([[], {}], {"task": "t"}), r"protocol 2 body is not \[args, kwargs, embed\]"),
        (v2({"a": 1}), "task args is a dict, not a list"),
        (v2([], [1]), "task kwargs is a list, not an object"),
        (v2([], task=5), "task name is a int"),
        (envelope([[], {}, {}]), "no task name"),
        (envelope({"id": "x", "args": []}), "protocol 1 body has no 'task'"),
        (envelope({"task": "t", "args": "abc"}), "task args is a str"),
    ],
)
def test_malformed_envelopes(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        decode_message(raw)


@given(st.text(max_size=64))
def test_any_body_text_decodes_or_is_malformed(body: str) -> None:
    """Whatever text a body holds, decoding gives a task or a MalformedMessage, never another error; and
    what decodes is what Python's strict base64 reads."""
    try:
        decode_message(envelope([[], {}, {}], {"task": "t"}, body=body))
    except MalformedMessage:
        return
    assert json.loads(binascii.a2b_base64(body, strict_mode=True)) == [[], {}, {}]


# --- events ---


def test_event_fields_from_the_task_arguments() -> None:
    event = event_from_task(
        task("d", "1.1.1.1", "http://site", {"event": "e"}, 2, NOW, "2021-01-01T00:00:00Z")
    )

    assert sorted(event) == sorted(
        ["distinct_id", "ip", "site_url", "team_id", "now", "sent_at", "uuid", "event"]
    )
    assert event["ip"] == "1.1.1.1"
    assert event["site_url"] == "http://site"
    assert event["team_id"] == 2
    assert event["now"] == NOW
    assert event["sent_at"] == "2021-01-01T00:00:00Z"


def test_the_servers_fields_win_over_the_clients_copies_in_data() -> None:
    """The original merged `data` over the arguments, so a client's `"team_id": 3` wrote into team 3."""
    data = {
        "event": "e",
        "team_id": 3,
        "ip": "9.9.9.9",
        "distinct_id": 42,
        "site_url": "http://evil",
        "now": "2000-01-01T00:00:00Z",
        "sent_at": "2000-01-01T00:00:00Z",
        "properties": {"$ip": "9.9.9.9", "x": 1},
        "uuid": "0178a3ab-d163-0000-4b55-bceadebb03fa",
    }

    event = event_from_task(task("d", "1.1.1.1", "s", data, 2, NOW, None))

    assert (event["team_id"], event["ip"], event["distinct_id"]) == (2, "1.1.1.1", "d")
    assert (event["site_url"], event["now"], event["sent_at"]) == ("s", NOW, None)
    assert event["properties"] == {"x": 1}  # the connection's ip is stored, not the client's
    assert event["uuid"] == "0178a3ab-d163-0000-4b55-bceadebb03fa"  # no uuid argument: data's


def test_an_ip_property_stays_when_the_message_has_no_ip() -> None:
    event = event_from_task(task("d", None, None, {"event": "e", "properties": {"$ip": "9.9.9.9"}}, 2, NOW))

    assert event["properties"] == {"$ip": "9.9.9.9"}


def test_nul_characters_and_lone_surrogates_are_scrubbed() -> None:
    data = '{"event": "a\\u0000b", "properties": {"k\\u0000": "\\ud800x"}}'
    event = event_from_task(
        decode_message(encode_task(PROCESS_EVENT_TASK, ["d\x00", None, None, data, 2, NOW], queue="q"))
    )

    assert (event["event"], event["distinct_id"]) == ("ab", "d")
    assert event["properties"] == {"k": "\ufffdx"}


def test_data_may_be_a_json_string() -> None:
    event = event_from_task(task("d", None, None, '{"event": "e", "properties": {"x": 1}}', 2, NOW, None))

    assert event["properties"] == {"x": 1}


def test_missing_sent_at_is_none_even_with_kwargs() -> None:
    event = event_from_task(task("d", None, None, {"event": "e"}, 2, NOW, unknown="ignored"))

    assert event["sent_at"] is None
    assert "unknown" not in event


def test_arguments_by_name() -> None:
    by_name = task(
        distinct_id="d", ip=None, site_url="s", data={"event": "e"}, team_id=2, now=NOW, sent_at=NOW
    )
    mixed = task("d", None, "s", data={"event": "e"}, team_id=2, now=NOW)

    assert event_from_task(by_name)["sent_at"] == NOW
    assert event_from_task(by_name)["uuid"] == event_from_task(mixed)["uuid"]
    assert event_from_task(mixed)["sent_at"] is None


@pytest.mark.parametrize(
    ("value", "text"), [(123, "123"), (5.0, "5"), (1.5, "1.5"), (True, "true"), ("x", "x")]
)
def test_distinct_id_becomes_text_as_in_javascript(value: Any, text: str) -> None:
    assert event_from_task(task(value, None, None, {}, 2, NOW))["distinct_id"] == text


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (task("d", None, None, {}, 2, NOW, NOW, "extra"), "at most 7 arguments, got 8"),
        (task("d", None, None, {}, 2), "missing now"),
        (task(), "missing distinct_id, ip, site_url, data, team_id, now"),
        (task("d", None, None, {}, 2, NOW, team_id=3), "'team_id' given both by position and by name"),
        (task("d", None, None, [1], 2, NOW), "event data is a list"),
        (task("d", None, None, 7, 2, NOW), "event data is a int"),
        (task("d", None, None, "[1]", 2, NOW), "event data is a list"),
        (task("d", None, None, "{oops", 2, NOW), "event data is not valid JSON"),
        (task(None, None, None, {}, 2, NOW), "distinct_id None is not a string"),
        (task({"id": 1}, None, None, {}, 2, NOW), "distinct_id .* is not a string"),
        (task("d", None, None, {}, "2", NOW), "team_id '2' is not an integer"),
        (task("d", None, None, {}, None, NOW), "team_id None is not an integer"),
        (CeleryTask(PLUGIN_JOB_TASK, None, [2, 1, "t", "start", {}], {}), "does not carry an event"),
    ],
)
def test_malformed_event_tasks(bad: CeleryTask, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        event_from_task(bad)


def test_uuid_is_derived_from_task_id_and_now() -> None:
    first = event_from_task(task("d", None, None, {"event": "e"}, 2, NOW, task_id="id-1"))
    redelivered = event_from_task(task("d", None, None, {"event": "e"}, 2, NOW, task_id="id-1"))
    other = event_from_task(task("d", None, None, {"event": "e"}, 2, NOW, task_id="id-2"))

    assert first["uuid"] == redelivered["uuid"] != other["uuid"]
    assert uuid.UUID(first["uuid"]).int >> 80 == NOW_MS


@pytest.mark.parametrize(
    ("now", "unix_ms"), [("2021-03-04T05:06:07.890", NOW_MS), ("yesterday", 0), (None, 0)]
)
def test_uuid_time_from_now(now: Any, unix_ms: int) -> None:
    event = event_from_task(task("d", None, None, {}, 2, now, task_id="id-1"))

    assert uuid.UUID(event["uuid"]).int >> 80 == unix_ms


def test_uuid_without_task_id_is_new_each_time() -> None:
    first = event_from_task(task("d", None, None, {}, 2, NOW, task_id=None))
    second = event_from_task(task("d", None, None, {}, 2, NOW, task_id=None))

    assert first["uuid"] != second["uuid"]


def test_null_uuid_in_data_is_replaced() -> None:
    event = event_from_task(task("d", None, None, {"uuid": None}, 2, NOW, task_id="id-1"))

    assert event["uuid"] == event_from_task(task("d", None, None, {}, 2, NOW, task_id="id-1"))["uuid"]
