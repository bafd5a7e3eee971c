"""Today's event records: an event's person properties are its person's with the event's $set over
them, whether the batch's JSON of the person serves (a $set that changes nothing) or not."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from plugin_server.ingestion.persons import PersonRow
from plugin_server.ingestion.types import PreparedEvent
from plugin_server.jsvalues import json_text
from plugin_server.sinks.kafka.current import CurrentFormat

NOW = datetime(2026, 12, 4, 15, 0, tzinfo=UTC)
KEYS = st.sampled_from(["email", "plan", "n", "flag", "x"])
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, min_value=-2, max_value=2),
    st.sampled_from(["a", "b", ""]),
    st.lists(st.integers(0, 2), max_size=2),
    st.dictionaries(st.sampled_from(["k"]), st.integers(0, 1)),
)


def person_properties(properties: dict[str, Any], to_set: Any) -> str:
    person = PersonRow(1, "0188c8b4-0000-0000-0000-000000000001", 2, NOW, properties, False)
    event = PreparedEvent(
        "0188c8b4-0000-0000-0000-000000000002",
        2,
        "someone",
        None,
        None,
        "$pageview",
        {} if to_set is None else {"$set": to_set},
        NOW,
        NOW,
        None,
    )
    records = CurrentFormat().event_records({(2, "someone"): person}, NOW)
    text: str = orjson.loads(records(event).value)["person_properties"]
    return text


@given(st.dictionaries(KEYS, VALUES), st.one_of(st.none(), st.dictionaries(KEYS, VALUES), VALUES))
def test_person_properties_are_the_persons_with_the_events_set_over_them(
    properties: dict[str, Any], to_set: Any
) -> None:
    expected = {**properties, **to_set} if isinstance(to_set, dict) else properties
    assert person_properties(properties, to_set) == json_text(expected)


def test_a_set_that_changes_nothing_in_value_can_still_change_the_json() -> None:
    assert person_properties({"n": 1, "f": 0.0}, {"n": 1}) == '{"n":1,"f":0.0}'
    assert person_properties({"n": 1, "f": 0.0}, {"f": -0.0}) == '{"n":1,"f":-0.0}'
    assert person_properties({"n": 1}, {"n": True}) == '{"n":true}'
    assert person_properties({"n": 1}, {"n": 1.0}) == '{"n":1.0}'
