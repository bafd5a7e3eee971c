"""The JSON of ClickHouse's records: as JSON.stringify writes it, whichever path orjson takes."""

from __future__ import annotations

import pytest

from plugin_server.jsvalues import json_bytes, json_text


def test_string_keys_take_the_fast_path_and_other_keys_are_written_as_strings() -> None:
    assert (
        json_bytes({"a": [1, 2.5, None, True], "ü": {"b": "c"}})
        == '{"a":[1,2.5,null,true],"ü":{"b":"c"}}'.encode()
    )
    # A plugin's object can have keys that are not strings, at any depth: written as JSON.stringify does.
    assert json_text({"properties": {1: "one", "nested": {2.5: [3], None: False}}}) == (
        '{"properties":{"1":"one","nested":{"2.5":[3],"null":false}}}'
    )


def test_what_json_cannot_hold_is_still_an_error() -> None:
    with pytest.raises(TypeError):
        json_bytes({1: object()})
