"""The C passes over event properties (_event_properties.c) against the Python they replaced."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugin_server.ingestion._event_properties import campaign_and_initial, collect_names
from plugin_server.ingestion.rules import (
    _CAMPAIGN_KEYS,
    _CAMPAIGN_PAIRS,
    _INITIAL_KEYS,
    add_campaign_and_initial_properties,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
# Keys the rules look for, mixed with others, so that every branch is met.
keys = st.sampled_from([*_CAMPAIGN_KEYS, *dict(_INITIAL_KEYS), "$set", "$set_once", "plan"]) | st.text(
    max_size=8
)
properties = st.dictionaries(keys, json_values, max_size=12)


def python_campaign_and_initial(properties: dict[str, Any]) -> None:
    """Rules 25-26 as they were written in Python."""
    campaign = {key: properties[key] for key in _CAMPAIGN_KEYS if key in properties}
    if campaign:
        current = properties.get("$set")
        properties["$set"] = {**current, **campaign} if isinstance(current, dict) else campaign
    initial = {name: properties[key] for key, name in _INITIAL_KEYS if key in properties}
    if initial:
        current = properties.get("$set_once")
        properties["$set_once"] = {**current, **initial} if isinstance(current, dict) else initial


def python_collect_names(events: list[tuple[int, str, dict[str, Any]]]) -> dict[int, tuple[set[str], ...]]:
    """The definitions' pass as it was written in Python."""
    by_team: dict[int, tuple[set[str], set[str], set[str]]] = {}
    for team_id, event, properties in events:
        names, keys, numerical = by_team.setdefault(team_id, (set(), set(), set()))
        names.add(event)
        keys.update(properties)
        numerical.update(key for key, value in properties.items() if type(value) in (int, float))
    return by_team


@given(properties)
def test_campaign_and_initial_is_the_python_rule(given_properties: dict[str, Any]) -> None:
    expected = copy.deepcopy(given_properties)
    python_campaign_and_initial(expected)
    actual = copy.deepcopy(given_properties)
    add_campaign_and_initial_properties(actual)
    assert actual == expected
    assert list(actual) == list(expected)  # the same key order, nested ones too
    for key in ("$set", "$set_once"):
        if isinstance(actual.get(key), dict):
            assert list(actual[key]) == list(expected[key])


def test_the_set_dicts_are_replaced_not_changed() -> None:
    given_set = {"email": "a@example.com", "utm_source": "old"}
    properties = {"utm_source": "news", "$browser": "Chrome", "$set": given_set, "$set_once": "not a dict"}
    add_campaign_and_initial_properties(properties)
    assert given_set == {"email": "a@example.com", "utm_source": "old"}
    assert properties["$set"] == {"email": "a@example.com", "utm_source": "news"}
    assert properties["$set_once"] == {"$initial_utm_source": "news", "$initial_browser": "Chrome"}


@given(st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.text(max_size=5), properties), max_size=6))
def test_collect_names_is_the_python_pass(events: list[tuple[int, str, dict[str, Any]]]) -> None:
    assert collect_names(events) == python_collect_names(events)


def test_collect_names_takes_any_iterable_of_triples() -> None:
    found = collect_names((team, "e", {"n": 1}) for team in (1, 1, 2))
    assert found == {1: ({"e"}, {"n"}, {"n"}), 2: ({"e"}, {"n"}, {"n"})}


@pytest.mark.parametrize("events", [[(1, "e")], [(1, "e", [("a", 1)])], ["text"], 5])
def test_collect_names_refuses_what_is_not_a_triple_with_a_dict(events: Any) -> None:
    with pytest.raises(TypeError):
        collect_names(events)


@pytest.mark.parametrize(
    "arguments",
    [
        ([("utm_source", 1)], _CAMPAIGN_PAIRS, _INITIAL_KEYS),
        ({}, list(_CAMPAIGN_PAIRS), _INITIAL_KEYS),
        ({"$os": "Linux"}, _CAMPAIGN_PAIRS, ("$os",)),
        ({"utm_source": "news"}, _CAMPAIGN_KEYS, _INITIAL_KEYS),
    ],
)
def test_campaign_and_initial_refuses_other_arguments(arguments: tuple[Any, Any, Any]) -> None:
    with pytest.raises(TypeError):
        campaign_and_initial(*arguments)
