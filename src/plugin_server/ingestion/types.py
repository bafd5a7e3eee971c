"""The shapes that move through the ingestion pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# A raw event as a plugin sees it (the original's PluginEvent): the top-level queue fields
# {distinct_id, ip, site_url, team_id, now, sent_at, uuid} merged with the capture `data`
# {event, properties, timestamp, offset, $set, $set_once, ...}. Plain dicts, so plugins can change them.
RawEvent = dict[str, Any]


class InvalidEvent(ValueError):
    """The event cannot be ingested as it is (bad uuid, unknown team...). It goes to the dead letter store."""


@dataclass(frozen=True, slots=True)
class Team:
    id: int
    uuid: str
    organization_id: str
    name: str
    api_token: str
    anonymize_ips: bool
    ingested_event: bool
    session_recording_opt_in: bool
    slack_incoming_webhook: str | None = None


@dataclass(slots=True)
class Element:
    """One autocapture element, as stored in posthog_element and serialised into elements_chain.

    The fields are declared in the order jsonb keeps keys (shorter first, then by their bytes): orjson
    writes them in this order into posthog_event's elements column, and Postgres then need not sort
    each element's keys (4-5 µs of its CPU per event of 5 elements)."""

    href: str | None = None
    text: str | None = None
    order: int | None = None
    attr_id: str | None = None
    tag_name: str | None = None
    nth_child: int | None = None
    attr_class: list[str] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    nth_of_type: int | None = None


@dataclass(slots=True)
class PreparedEvent:
    """An event after the team-independent rules ran (uuid checked, name shaped, $set merged,
    elements extracted, timestamp computed), ready for the team, person and storage steps."""

    uuid: str
    team_id: int
    distinct_id: str
    ip: str | None
    site_url: str | None
    event: str
    properties: dict[str, Any]
    timestamp: datetime
    now: datetime
    sent_at: datetime | None
    elements: list[Element] = field(default_factory=list)

    @property
    def is_snapshot(self) -> bool:
        return self.event == "$snapshot"
