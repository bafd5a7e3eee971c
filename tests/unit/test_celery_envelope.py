"""The C reader of the common Celery envelope against the checked path: whatever it reads, the
checked path reads the same; what it does not read, it leaves to the checked path."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from plugin_server.ingestion._celery_envelope import read_envelope
from plugin_server.ingestion.celery import (
    PROCESS_EVENT_TASK,
    CeleryTask,
    decode_checked,
    decode_message,
    encode_task,
)
from plugin_server.ingestion.message_fields import MalformedMessage

TASK = PROCESS_EVENT_TASK.encode()
ARGS = [
    "user-1",
    "1.2.3.4",
    "http://site",
    {"event": "e", "properties": {"a": [1, 2.5, None]}},
    2,
    "now",
    None,
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


class Escaped(str):
    """JSON text put into an envelope as it is: a value spelled with escapes (`\\/`, `\\u002d`)."""


def as_json(value: Any, ascii_only: bool) -> str:
    return value if isinstance(value, Escaped) else json.dumps(value, ensure_ascii=ascii_only)


def agrees(message: bytes) -> None:
    """The message decodes as the checked path decodes it, or fails with its words (a body that the C
    reader read but is not a task's fails in the same shared steps); what the C reader read is what
    the checked path read."""
    read = read_envelope(message, TASK)
    try:
        checked: CeleryTask | MalformedMessage = decode_checked(message)
    except MalformedMessage as error:
        checked = error
    if read is not None and isinstance(checked, CeleryTask):
        task_id, body = read
        assert checked.name == PROCESS_EVENT_TASK and checked.id == task_id
        assert [checked.args, checked.kwargs] == json.loads(body)[:2]
    try:
        assert decode_message(message) == checked
    except MalformedMessage as error:
        assert isinstance(checked, MalformedMessage) and str(error) == str(checked)


def test_the_server_s_own_envelopes_are_read_in_c() -> None:
    message = encode_task(PROCESS_EVENT_TASK, ARGS, queue="q", task_id="t-1")
    read = read_envelope(message, TASK)
    assert read is not None and read[0] == "t-1" and json.loads(read[1]) == [ARGS, {}, {}]
    agrees(message)


@settings(max_examples=400)
@given(
    st.data(),
    st.permutations(["body", "content-type", "content-encoding", "headers", "properties", "extra"]),
    st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]),
)
def test_envelopes_of_every_shape_agree(data: st.DataObject, order: list[str], separators: Any) -> None:
    body = json.dumps(
        data.draw(st.sampled_from([[ARGS, {}, {}], [ARGS, {"k": 1}, None], [ARGS, {}], {"a": 1}]))
    )
    encoded = base64.b64encode(body.encode()).decode()
    fields: dict[str, Any] = {
        "body": data.draw(
            st.sampled_from(
                [
                    encoded,
                    encoded.rstrip("="),
                    encoded + "=",
                    Escaped(json.dumps(encoded).replace("/", "\\/")),
                    5,
                ]
            )
        ),
        "content-type": data.draw(
            st.sampled_from(["application/json", "application/x-python-serialize", None])
        ),
        "content-encoding": data.draw(st.sampled_from(["utf-8", "binary", Escaped('"utf\\u002d8"')])),
        "headers": {
            "lang": "py",
            "task": data.draw(st.sampled_from([PROCESS_EVENT_TASK, "other", "", None, 1])),
            **data.draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "id": st.sampled_from(["t-1", None, 7, "ü", 'a\\"b']),
                        "compression": st.sampled_from([None, "", 0, False, "zlib"]),
                    },
                )
            ),
            **data.draw(st.dictionaries(st.sampled_from(["x", "y", "é"]), json_values, max_size=2)),
        },
        "properties": data.draw(
            st.sampled_from([{"body_encoding": "base64"}, {"body_encoding": "plain"}, {}, None])
        ),
        "extra": data.draw(json_values),
    }
    keys = [key for key in order if key != "extra" or data.draw(st.booleans())]
    keys = [key for key in keys if data.draw(st.integers(0, 9))]  # now and then a field is missing
    text = (
        "{"
        + separators[0].join(
            f"{json.dumps(key)}{separators[1]}{as_json(fields[key], ascii_only=data.draw(st.booleans()))}"
            for key in keys
        )
        + "}"
    )
    agrees(text.encode())


def test_mangled_envelopes_agree() -> None:
    rng = random.Random(11)
    base = encode_task(PROCESS_EVENT_TASK, ARGS, queue="q", task_id="t-1")
    alphabet = b'{}[]":,\\ 0aA=+/-eE.\x00\x1f\x7f\xc3\xa9tnul'
    for _ in range(5_000):
        message = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(message))
            what = rng.randrange(3)
            if what == 0:
                del message[at]
            elif what == 1:
                message.insert(at, rng.choice(alphabet))
            else:
                message[at] = rng.choice(alphabet)
        agrees(bytes(message))


def test_duplicate_keys_and_deep_nesting_are_left_to_the_checked_path() -> None:
    good = encode_task(PROCESS_EVENT_TASK, ARGS, queue="q", task_id="t-1").decode()
    twice = good.replace('"headers":', '"headers":{"task":"other"},"headers":', 1)
    deep = good[:-1] + ',"x":' + "[" * 40 + "]" * 40 + "}"
    for message in (twice, deep):
        assert read_envelope(message.encode(), TASK) is None
        agrees(message.encode())
