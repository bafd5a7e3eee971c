"""Plugin settings checked against plugin.json (`config`)."""

from __future__ import annotations

import pytest

from plugin_server.plugins.admin import AdminError
from plugin_server.plugins.settings_schema import check_settings, masked, setting_fields

SCHEMA = [
    {"markdown": "Set this up **first**", "type": "markdown"},
    {"key": "host", "name": "Host", "type": "string", "required": True, "default": "localhost"},
    {"key": "level", "name": "Level", "type": "choice", "choices": ["a", "b"], "default": "a"},
    {"key": "rules", "name": "Rules", "type": "json"},
    {"key": "token", "name": "Token", "type": "string", "secret": True, "required": True},
    {"key": "file", "name": "File", "type": "attachment", "required": True},
]


def test_fields_from_a_list_or_the_older_keyed_object() -> None:
    fields = setting_fields(SCHEMA)
    assert [(field.key, field.type) for field in fields] == [
        ("", "markdown"),
        ("host", "string"),
        ("level", "choice"),
        ("rules", "json"),
        ("token", "string"),
        ("file", "attachment"),
    ]
    assert fields[0].markdown == "Set this up **first**"
    assert fields[2].choices == ("a", "b")
    keyed = setting_fields({"limit": {"name": "Limit", "default": 10}, "broken": "x"})
    assert [(field.key, field.type, field.default) for field in keyed] == [("limit", "string", "10")]
    assert setting_fields(None) == [] and setting_fields("nonsense") == []


def test_good_values_are_returned_and_an_empty_secret_keeps_the_stored_one() -> None:
    fields = setting_fields(SCHEMA)
    given = {"host": "db", "level": "b", "rules": '{"x": 1}', "token": "", "file": "uploaded"}
    assert check_settings(fields, given, {"token": "t0"}) == {"host": "db", "level": "b", "rules": '{"x": 1}'}
    # a non-string value (e.g. from the API) is stored as text; a required value left out has its default
    assert check_settings(fields, {"rules": {"x": 1}}, {"token": "t"}, attachments={"file"}) == {
        "rules": '{"x": 1}'
    }
    with pytest.raises(AdminError, match=r"Host \(host\) is required"):
        check_settings(fields, {"host": ""}, {"token": "t"}, attachments={"file"})


def test_every_problem_is_named() -> None:
    fields = setting_fields(SCHEMA)
    with pytest.raises(AdminError) as raised:
        check_settings(fields, {"level": "c", "rules": "[1,", "nope": "1"}, {})
    message = str(raised.value)
    assert "'nope' is not a setting of this plugin" in message
    assert "Level (level) must be one of a, b, not 'c'" in message
    assert "Rules (rules) is not valid JSON" in message
    assert "Token (token) is required" in message
    assert "File (file) is required: upload a file" in message


def test_secrets_are_masked() -> None:
    fields = setting_fields(SCHEMA)
    assert masked(fields, {"host": "db", "token": "t0"}) == {"host": "db", "token": "(set)"}
    assert masked(fields, {"token": ""}) == {"token": "(unset)"}


def test_undeclared_keys_are_refused_unless_allowed_but_server_keys_always_pass() -> None:
    fields = setting_fields(SCHEMA)
    current = {"token": "t"}
    with pytest.raises(AdminError, match="'colour' is not a setting"):
        check_settings(fields, {"colour": "red"}, current, attachments={"file"})
    assert check_settings(fields, {"colour": "red"}, current, attachments={"file"}, undeclared=True) == {
        "colour": "red"
    }
    assert check_settings(fields, {"exportEventsToIgnore": "$pageview"}, current, attachments={"file"}) == {
        "exportEventsToIgnore": "$pageview"
    }
