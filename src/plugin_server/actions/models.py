"""Actions and their steps as stored in posthog_action / posthog_actionstep, and what an event is
matched with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from plugin_server.ingestion.types import Element


@dataclass(frozen=True, slots=True)
class ActionStep:
    id: int
    action_id: int
    tag_name: str | None = None
    text: str | None = None
    href: str | None = None
    selector: str | None = None
    url: str | None = None
    url_matching: str | None = None
    event: str | None = None
    properties: Sequence[Any] = ()


@dataclass(frozen=True, slots=True)
class Action:
    id: int
    team_id: int
    name: str | None
    post_to_slack: bool = False
    slack_message_format: str = ""
    steps: tuple[ActionStep, ...] = ()


@dataclass(frozen=True, slots=True)
class Person:
    """A person as matching and hooks see it: `row` is the posthog_person row (the REST hook's `person`),
    `cohorts` the ids of the cohorts asked about that it belongs to."""

    id: int
    properties: Mapping[str, Any]
    cohorts: frozenset[int] = frozenset()
    row: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class EventFacts:
    """What a step is checked against; `url` is `$current_url` when it is a non-empty string."""

    event: str
    properties: Mapping[str, Any]
    elements: Sequence[Element]
    person: Person | None = None
    url: str | None = field(init=False)

    def __post_init__(self) -> None:
        url = self.properties.get("$current_url")
        self.url = url if isinstance(url, str) and url else None


def action_from_row(row: Mapping[str, Any]) -> Action:
    """An action from a row with its steps aggregated as JSON objects (see store.py)."""
    steps = tuple(
        ActionStep(
            id=step["id"],
            action_id=step["action_id"],
            tag_name=step.get("tag_name"),
            text=step.get("text"),
            href=step.get("href"),
            selector=step.get("selector"),
            url=step.get("url"),
            url_matching=step.get("url_matching"),
            event=step.get("event"),
            properties=step.get("properties") or (),
        )
        for step in sorted(row["steps"] or (), key=lambda step: step["id"])
    )
    return Action(
        id=row["id"],
        team_id=row["team_id"],
        name=row["name"],
        post_to_slack=bool(row["post_to_slack"]),
        slack_message_format=row["slack_message_format"] or "",
        steps=steps,
    )
