"""The messages a team's Slack, Discord or Teams webhook gets (the original's hooks cases as reference)."""

from __future__ import annotations

import json

import pytest

from plugin_server.actions.messages import (
    WebhookType,
    action_details,
    format_message,
    node_format,
    user_details,
    webhook_body,
    webhook_type,
)
from plugin_server.actions.models import Action, Person

SITE = "https://localhost:8000"
EVENT = {
    "distinct_id": "2",
    "event": "$pageview",
    "properties": {"$browser": "Chrome", "page_title": "Pricing"},
}
NOBODY = Person(id=1, properties={})


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("https://hooks.slack.com/services/", WebhookType.SLACK),
        ("https://discord.com/api/webhooks/", WebhookType.DISCORD),
        ("https://outlook.office.com/webhook/", WebhookType.TEAMS),
    ],
)
def test_webhook_type(url: str, kind: WebhookType) -> None:
    assert webhook_type(url) is kind


def test_user_and_action_details() -> None:
    person = Person(id=1, properties={"email": "test@posthog.com"})
    assert user_details("2", person, SITE, WebhookType.SLACK) == (
        "test@posthog.com",
        f"<{SITE}/person/2|test@posthog.com>",
    )
    assert user_details("2", person, SITE, WebhookType.TEAMS) == (
        "test@posthog.com",
        f"[test@posthog.com]({SITE}/person/2)",
    )
    assert user_details("2", None, SITE, WebhookType.SLACK) == ("undefined", "undefined")
    action = Action(id=1, team_id=2, name="action1")
    assert action_details(action, SITE, WebhookType.SLACK) == ("action1", f"<{SITE}/action/1|action1>")
    assert action_details(action, SITE, WebhookType.DISCORD) == ("action1", f"[action1]({SITE}/action/1)")


def message(
    template: str, person: Person | None = NOBODY, kind: WebhookType = WebhookType.SLACK
) -> tuple[str, str]:
    action = Action(id=1, team_id=2, name="action1", slack_message_format=template)
    return format_message(action, EVENT, person, SITE, kind)


def test_custom_format() -> None:
    template = (
        "[user.name] from [user.browser] on [event.properties.page_title] page with [event.properties.fruit]"
    )
    assert message(template) == (
        "2 from Chrome on Pricing page with undefined",
        f"<{SITE}/person/2|2> from Chrome on Pricing page with undefined",
    )


def test_default_format() -> None:
    assert message("") == (
        "action1 was triggered by 2",
        f"<{SITE}/action/1|action1> was triggered by <{SITE}/person/2|2>",
    )
    assert (
        message("", kind=WebhookType.TEAMS)[1]
        == f"[action1]({SITE}/action/1) was triggered by [2]({SITE}/person/2)"
    )


def test_missing_properties_and_event_name() -> None:
    assert message("[user.name] did [event.name] in [user.brauzer]") == (
        "2 did $pageview in undefined",
        f"<{SITE}/person/2|2> did $pageview in undefined",
    )
    assert message("by [user.name]", person=None) == ("by undefined", "by undefined")


def test_unknown_token_root_is_a_formatting_error() -> None:
    text, markdown = message("[user.name] and [foo.bar]")
    assert (
        text
        == '⚠ Error: There are one or more formatting errors in the message template for action "action1".'
    )
    assert markdown == (
        "*⚠ Error: There are one or more formatting errors in the message template for action "
        f'"<{SITE}/action/1|action1>".*'
    )
    assert message("[]")[0].startswith("⚠ Error")


def test_node_format() -> None:
    assert node_format("%s and %s", ["a"]) == "a and %s"
    assert node_format("100%% %s", ["done", "extra"]) == "100% done extra"
    assert node_format("%d items", ["3"]) == "3 items"


def test_webhook_bodies() -> None:
    action = Action(id=1, team_id=2, name="action1")
    slack = webhook_body("https://hooks.slack.com/x", action, EVENT, NOBODY, SITE)
    assert json.loads(slack) == {
        "text": "action1 was triggered by 2",
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"<{SITE}/action/1|action1> was triggered by <{SITE}/person/2|2>",
                },
            }
        ],
    }
    assert slack.startswith('{\n    "text"')  # indented by 4, as the original sent it
    teams = webhook_body("https://outlook.office.com/webhook/x", action, EVENT, NOBODY, SITE)
    assert json.loads(teams) == {"text": f"[action1]({SITE}/action/1) was triggered by [2]({SITE}/person/2)"}
