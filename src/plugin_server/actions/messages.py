"""The message a team's Slack, Discord or Teams webhook gets when an action matches, as the original wrote it.

The template is the action's `slack_message_format` (default `[action.name] was triggered by
[user.name]`). Tokens in square brackets: `[action.name]` (a link to the action), `[user.name]` (the
person's email or distinct id, linked to the person; `undefined` without a person), `[user.<x>]` (the
event's `$<x>` property), `[event.name]`, `[event.properties.<key>]`. A token with another root makes
the whole message a formatting-error notice. The text is filled in as node's `util.format` would.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

from plugin_server.actions.js_compare import UNDEFINED, stringify, to_number
from plugin_server.actions.models import Action, Person
from plugin_server.jsvalues import js_string

DEFAULT_FORMAT = "[action.name] was triggered by [user.name]"
_TOKEN = re.compile(r"(?<=\[)(.*?)(?=\])")
_BRACKETED = re.compile(r"\[(.*?)\]")
_WORD = re.compile(r"[A-Za-z0-9_]+")
_SPECIFIER = re.compile(r"%[sdifjoOc%]")


class WebhookType(Enum):
    SLACK = "slack"
    DISCORD = "discord"
    TEAMS = "teams"


def webhook_type(url: str) -> WebhookType:
    lowered = url.lower()
    if "slack.com" in lowered:
        return WebhookType.SLACK
    if "discord.com" in lowered:
        return WebhookType.DISCORD
    return WebhookType.TEAMS


def _link(kind: WebhookType, url: str, text: str) -> str:
    return f"<{url}|{text}>" if kind is WebhookType.SLACK else f"[{text}]({url})"


def user_details(
    distinct_id: str, person: Person | None, site_url: str, kind: WebhookType
) -> tuple[str, str]:
    if person is None:
        return "undefined", "undefined"
    name = stringify(person.properties.get("email") or distinct_id)
    return name, _link(kind, f"{site_url}/person/{distinct_id}", name)


def action_details(action: Action, site_url: str, kind: WebhookType) -> tuple[str, str]:
    name = stringify(action.name)
    return name, _link(kind, f"{site_url}/action/{action.id}", name)


class _FormatError(Exception):
    pass


def token_value(
    parts: Sequence[str],
    action: Action,
    event: Mapping[str, Any],
    person: Person | None,
    site_url: str,
    kind: WebhookType,
) -> tuple[str, str]:
    """(text, markdown) of one token, split into its words."""
    root = parts[0] if parts else None
    second = parts[1] if len(parts) > 1 else "undefined"
    properties = event.get("properties") or {}
    if root == "user":
        if second == "name":
            return user_details(str(event.get("distinct_id")), person, site_url, kind)
        text = stringify(properties.get(f"${second}", UNDEFINED))
        return text, text
    if root == "action":
        return action_details(action, site_url, kind) if second == "name" else ("", "")
    if root == "event":
        text = ""
        if second == "name":
            text = stringify(event.get("event", UNDEFINED))
        elif second == "properties" and len(parts) > 2:
            text = stringify(properties.get(parts[2], UNDEFINED))
        return text, text
    raise _FormatError(root)


def node_format(template: str, values: Sequence[str]) -> str:
    """`util.format(template, ...values)` for string values."""
    remaining = list(values)

    def fill(found: re.Match[str]) -> str:
        specifier = found[0][1]
        if specifier == "%":
            return "%"
        if not remaining:
            return found[0]
        value = remaining.pop(0)
        if specifier == "s":
            return value
        if specifier in "df":
            return js_string(to_number(value))
        if specifier == "i":
            number = to_number(value)
            return (
                js_string(float(int(number))) if number == number and abs(number) != float("inf") else "NaN"
            )
        if specifier == "j":
            return json.dumps(value, ensure_ascii=False)
        if specifier in "oO":
            return "'" + value.replace("'", "\\'") + "'"
        return ""  # %c: CSS, dropped

    return " ".join([_SPECIFIER.sub(fill, template), *remaining])


def format_message(
    action: Action, event: Mapping[str, Any], person: Person | None, site_url: str, kind: WebhookType
) -> tuple[str, str]:
    """(text, markdown) of the message for a matched action."""
    template = action.slack_message_format or DEFAULT_FORMAT
    tokens = _TOKEN.findall(template)
    try:
        values = [
            token_value(_WORD.findall(token), action, event, person, site_url, kind) for token in tokens
        ]
    except _FormatError:
        name, markdown = action_details(action, site_url, kind)
        notice = "⚠ Error: There are one or more formatting errors in the message template for action"
        return f'{notice} "{name}".', f'*{notice} "{markdown}".*'
    tokenized = _BRACKETED.sub("%s", template) if tokens else template
    return (
        node_format(tokenized, [text for text, _ in values]),
        node_format(tokenized, [markdown for _, markdown in values]),
    )


def webhook_body(
    url: str, action: Action, event: Mapping[str, Any], person: Person | None, site_url: str
) -> str:
    """The JSON body posted to the team's webhook (indented by 4, as the original sent it)."""
    kind = webhook_type(url)
    text, markdown = format_message(action, event, person, site_url, kind)
    message: dict[str, Any] = (
        {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": markdown}}]}
        if kind is WebhookType.SLACK
        else {"text": markdown}
    )
    return json_body(message)


def json_body(value: Any) -> str:
    """`JSON.stringify(value, undefined, 4)`."""
    return json.dumps(value, indent=4, ensure_ascii=False, default=str)
