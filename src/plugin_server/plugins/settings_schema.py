"""A plugin's settings as its plugin.json declares them (`config`), and checking values against them.

PostHog's format is a list of fields `{key, name, type, default, required, secret, hint, choices}`
with type `string` (the default), `choice`, `json`, `attachment` or `markdown` (text shown to the
operator, no value); older plugins give an object keyed by setting instead. Values are stored as
PostHog's app stored them: strings (a json setting is its text), attachments in their own table.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from plugin_server.plugins.admin import AdminError

VALUE_TYPES = ("string", "choice", "json")
# Settings the server itself reads from any plugin's config (plugins.export), declared or not.
SERVER_KEYS = frozenset({"exportEventsBufferBytes", "exportEventsBufferSeconds", "exportEventsToIgnore"})


@dataclass(frozen=True, slots=True)
class SettingField:
    key: str
    name: str
    type: str
    default: str | None = None
    required: bool = False
    secret: bool = False
    hint: str = ""
    choices: tuple[str, ...] = ()
    markdown: str = ""  # the text of a markdown field

    @property
    def has_value(self) -> bool:
        """Whether the field holds a setting stored in the config (not an attachment, not a text)."""
        return self.type in VALUE_TYPES


def setting_fields(config_schema: Any) -> list[SettingField]:
    """The fields of a plugin's `config_schema` (list or keyed object); unreadable entries are skipped."""
    entries: list[Mapping[str, Any]]
    if isinstance(config_schema, Mapping):
        entries = [
            {"key": key, **value} for key, value in config_schema.items() if isinstance(value, Mapping)
        ]
    elif isinstance(config_schema, list):
        entries = [entry for entry in config_schema if isinstance(entry, Mapping)]
    else:
        entries = []
    fields = []
    for entry in entries:
        kind = str(entry.get("type") or "string")
        key = entry.get("key")
        if kind != "markdown" and not isinstance(key, str):
            continue
        default = entry.get("default")
        choices = entry.get("choices")
        fields.append(
            SettingField(
                key=str(key or ""),
                name=str(entry.get("name") or key or ""),
                type=kind,
                default=None if default is None else _text(default),
                required=bool(entry.get("required")),
                secret=bool(entry.get("secret")),
                hint=str(entry.get("hint") or ""),
                choices=tuple(str(choice) for choice in choices) if isinstance(choices, list) else (),
                markdown=str(entry.get("markdown") or "") if kind == "markdown" else "",
            )
        )
    return fields


def check_settings(
    fields: list[SettingField],
    given: Mapping[str, Any],
    current: Mapping[str, Any],
    attachments: Collection[str] = (),
    *,
    undeclared: bool = False,
) -> dict[str, Any]:
    """The settings to store from `given` (what the operator sent), checked against `fields`.

    A secret field given empty keeps its current value (secrets are never shown, so an empty box
    means "unchanged"). Keys plugin.json does not declare are kept with `undeclared` (besides those
    the server reads, SERVER_KEYS), else refused. Unknown keys, a choice outside its choices, json that does not parse and a
    required setting left without a value (given, stored or by default; for attachments: stored in
    `attachments` or uploaded now) are refused with one AdminError naming each problem.
    """
    known = {field.key: field for field in fields if field.has_value or field.type == "attachment"}
    extra = [key for key in given if key not in known]
    problems = [
        f"{key!r} is not a setting of this plugin"
        for key in extra
        if key not in SERVER_KEYS and not undeclared
    ]
    changes: dict[str, Any] = {key: given[key] for key in extra}
    for field in known.values():
        if field.type == "attachment":
            if field.required and field.key not in attachments and not given.get(field.key):
                problems.append(f"{field.name} ({field.key}) is required: upload a file")
            continue
        value = given.get(field.key)
        if value is not None and not isinstance(value, str):
            value = _text(value)
        if field.secret and not value:
            value = None  # unchanged
        if value is not None:
            problem = _value_problem(field, value)
            if problem:
                problems.append(problem)
                continue
            changes[field.key] = value
        stored = changes.get(field.key, current.get(field.key))
        # a required setting never given and never stored is fine when it has a default; emptied is not
        if field.required and stored in (None, "") and not (stored is None and field.default):
            problems.append(f"{field.name} ({field.key}) is required")
    if problems:
        raise AdminError("; ".join(problems))
    return changes


def masked(fields: list[SettingField], config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with the value of each secret setting replaced by whether it is set."""
    secret = {field.key for field in fields if field.secret}
    return {
        key: ("(set)" if value not in (None, "") else "(unset)") if key in secret else value
        for key, value in config.items()
    }


def _value_problem(field: SettingField, value: str) -> str | None:
    if field.type == "choice" and value and value not in field.choices:
        return f"{field.name} ({field.key}) must be one of {', '.join(field.choices)}, not {value!r}"
    if field.type == "json" and value:
        try:
            json.loads(value)
        except ValueError as error:
            return f"{field.name} ({field.key}) is not valid JSON: {error}"
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
