"""The raw event of a common task made in C (`event_or_task`, _task_event.c) against the Python path
(`event_from_task` of the checked decoding): the same event, key order included, or the same error;
what the C does not make, the Python path makes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin_server.ingestion._task_event import raw_event_of_body
from plugin_server.ingestion.celery import (
    PROCESS_EVENT_TASK,
    CeleryTask,
    decode_checked,
    encode_task,
    event_from_task,
    event_or_task,
)
from plugin_server.ingestion.message_fields import SERVER_FIELDS, MalformedMessage

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
KEYS = st.sampled_from([*SERVER_FIELDS, "uuid", "event", "properties", "timestamp", "$set", "data", "x"])
PROPERTIES = st.dictionaries(st.sampled_from(["$ip", "a", "$set", "b"]), JSON, max_size=4) | JSON
DATA = st.dictionaries(
    KEYS,
    st.one_of(JSON, PROPERTIES, st.sampled_from(["", "0184b1e7-6c43-7bb2-b0a7-5b4f1ab4c8ef"])),
    max_size=7,
)


def python_path(message: bytes) -> list[tuple[str, Any]] | str:
    try:
        return list(event_from_task(decode_checked(message)).items())
    except MalformedMessage as error:
        return f"error: {error}"


def c_path(message: bytes) -> list[tuple[str, Any]] | str:
    try:
        carried = event_or_task(message)
        event = event_from_task(carried) if isinstance(carried, CeleryTask) else carried
        return list(event.items())
    except MalformedMessage as error:
        return f"error: {error}"


@settings(max_examples=600, database=None)
@given(
    distinct_id=st.sampled_from(["user-1", "", 7, 2.5, True, None, {"a": 1}]),
    ip=st.sampled_from(["1.2.3.4", "", None, 0, 1, [], ["x"], {}]),
    site_url=st.sampled_from(["https://site", None, 3]),
    data=st.one_of(DATA, st.just('{"event": "e"}'), st.just([1]), st.none()),
    team_id=st.sampled_from([2, 0, -1, 2**40, True, "2", 2.0, None]),
    now=st.sampled_from(["2026-12-05T10:00:00+00:00", "2026-12-05T10:00:00", "not a time", None, 5]),
    sent_at=st.sampled_from(["2026-12-05T09:59:59.500Z", None]),
    arity=st.sampled_from([7, 7, 7, 6, 8]),
    kwargs=st.sampled_from([None, {}, {"sent_at": None}, {"team_id": 3}, {"other": 1}]),
    task_id=st.sampled_from(["t-1", None]),  # None: a random id, the same for both paths
)
def test_every_task_makes_the_same_event_or_error(
    distinct_id: Any,
    ip: Any,
    site_url: Any,
    data: Any,
    team_id: Any,
    now: Any,
    sent_at: Any,
    arity: int,
    kwargs: dict[str, Any] | None,
    task_id: str | None,
) -> None:
    args = [distinct_id, ip, site_url, data, team_id, now, sent_at, "extra"][:arity]
    message = encode_task(PROCESS_EVENT_TASK, args, kwargs, queue="q", task_id=task_id)
    assert c_path(message) == python_path(message)


@settings(max_examples=600, database=None)
@given(
    distinct_id=st.text(max_size=6),
    ip=JSON,
    site_url=JSON,
    data=DATA,
    team_id=st.integers(-(2**63), 2**64 - 1),
    now=st.sampled_from(["2026-12-05T10:00:00+00:00", "not a time", None]),
    sent_at=JSON,
)
def test_common_tasks_are_made_in_c_as_python_makes_them(
    distinct_id: str, ip: Any, site_url: Any, data: dict[str, Any], team_id: int, now: Any, sent_at: Any
) -> None:
    args = [distinct_id, ip, site_url, data, team_id, now, sent_at]
    message = encode_task(PROCESS_EVENT_TASK, args, queue="q", task_id="t-1")
    assert isinstance(event_or_task(message), dict)
    assert c_path(message) == python_path(message)


def test_the_common_task_is_made_in_c_with_the_server_fields_last_and_no_ip_property() -> None:
    data = {"ip": "6.6.6.6", "event": "e", "team_id": 9, "properties": {"a": 1, "$ip": "6.6.6.6", "b": 2}}
    args = ["user-1", "1.2.3.4", "https://site", data, 2, "2026-12-05T10:00:00+00:00", None]
    body = [args, {}, {}]
    made = raw_event_of_body(body)
    assert made is not None
    assert list(made) == ["event", "properties", "uuid", *SERVER_FIELDS]
    assert made["properties"] == {"a": 1, "b": 2} and list(made["properties"]) == ["a", "b"]
    assert data["properties"] == {"a": 1, "$ip": "6.6.6.6", "b": 2}  # the body is not changed
    assert made["ip"] == "1.2.3.4" and made["team_id"] == 2 and made["uuid"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"args": []},
        [[], {}, {}],
        [["u", "ip", "s", {}, 2, "now", None], {"x": 1}, {}],  # keyword arguments: Python's
        [["u", "ip", "s", {}, 2, "now", None], None, {}],
        [["u", "ip", "s", '{"event": "e"}', 2, "now", None], {}, {}],  # data as text: Python parses it
        [[1, "ip", "s", {}, 2, "now", None], {}, {}],  # a distinct id to write as text: Python's
        [["u", "ip", "s", {}, True, "now", None], {}, {}],
        [["u", "ip", "s", {}, "2", "now", None], {}, {}],
        [["u", "ip", "s", {}, 2, "now", None], {}],
        (["u", "ip", "s", {}, 2, "now", None], {}, {}),
    ],
)
def test_anything_but_the_common_task_is_left_to_python(body: Any) -> None:
    assert raw_event_of_body(body) is None
