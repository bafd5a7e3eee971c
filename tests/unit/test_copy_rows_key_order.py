"""The event rows' JSON columns are written with their objects' keys in jsonb's order (shorter first, then
by their UTF-8 bytes), so that Postgres need not sort them; the event itself keeps its own order, and an
autocapture element's fields are declared in that order."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from plugin_server.ingestion.types import Element
from plugin_server.jsvalues import json_bytes
from plugin_server.sinks._copy_binary import event_rows
from tests.pipelines import WrittenFrom, prepared_event


def rows_of(properties: Any, writer: Any = json_bytes) -> bytes:
    return event_rows([prepared_event(2, properties=properties)], [""], 0, writer)


def handed_to_json(properties: Any) -> Any:
    """What the row's properties column was written from."""
    writer = WrittenFrom()
    rows_of(properties, writer)
    return writer.values[0]


def jsonb_order(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda key: (len(key.encode()), key.encode()))


def test_keys_are_in_jsonbs_order_at_every_level_and_the_event_keeps_its_own() -> None:
    properties = {"zz": 1, "a": {"cc": 1, "b": 2}, "list": [{"yy": 1, "x": 2}, 3], "ü": 1, "z": 0}
    ordered = handed_to_json(properties)
    assert ordered == properties
    assert list(ordered) == ["a", "z", "zz", "ü", "list"]  # "ü" is two bytes, 0xc3 0xbc: after "zz"
    assert list(ordered["a"]) == ["b", "cc"]
    assert list(ordered["list"][0]) == ["x", "yy"]
    assert list(properties) == ["zz", "a", "list", "ü", "z"]
    assert list(properties["a"]) == ["cc", "b"] and list(properties["list"][0]) == ["yy", "x"]


def test_objects_in_order_already_are_handed_on_as_they_are() -> None:
    properties = {"a": [{"b": 1}], "$ip": "127.0.0.1", "$lib": "web", "$set": {"email": "e"}}
    assert handed_to_json(properties) is properties


def test_many_keys_are_ordered() -> None:
    properties = {f"key {n}": n for n in reversed(range(1000))}
    assert list(handed_to_json(properties)) == jsonb_order(list(properties))


def test_keys_that_are_not_text_are_left_to_the_json_writer() -> None:
    properties = {2: "two", "b": 1}
    assert handed_to_json(properties) is properties
    assert b'{"2":"two","b":1}' in rows_of(properties)


def test_objects_nested_past_the_ordering_depth_are_left_as_they_are() -> None:
    deep: dict[str, Any] = {"zz": 1, "a": 2}
    for _ in range(40):
        deep = {"zz": deep, "a": 0}
    ordered = handed_to_json(deep)
    assert ordered == deep
    level = ordered
    for _ in range(31):
        assert list(level) == ["a", "zz"]
        level = level["zz"]
    inner = level
    for _ in range(8):
        inner = inner["zz"]
    assert list(inner) == ["zz", "a"]  # past the depth: as the event held it (Postgres orders it)


def test_a_key_that_is_not_utf8_leaves_its_object_to_the_json_writer() -> None:
    """A lone surrogate (which the pipeline scrubs before this) has no UTF-8: nothing is reordered and
    the writer refuses it as it did before."""
    properties = {"zz": 1, "\ud800": 2}
    writer = WrittenFrom()
    with pytest.raises(TypeError):
        rows_of(properties, writer)
    assert writer.values[0] is properties


def test_empty_objects_and_lists_of_ordered_objects_are_handed_on_as_they_are() -> None:
    properties = {"a": {}, "b": [{"x": 1, "yy": 2}, [], "text"]}
    ordered = handed_to_json(properties)
    assert ordered is properties and ordered["b"] is properties["b"]


def test_an_elements_fields_are_written_in_jsonbs_order() -> None:
    written = orjson.loads(json_bytes(Element(tag_name="a", attributes={"attr__href": "/"})))
    assert list(written) == jsonb_order(list(written))
    assert set(written) == {field.name for field in dataclasses.fields(Element)}
