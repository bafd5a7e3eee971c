"""From a decoded request to the events to enqueue: shapes, tokens, sent_at, refusals."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin_server.ingestion.types import Team
from plugin_server.web.capture import captured_events, event_token
from plugin_server.web.payload import CaptureError, CaptureInput

NOW = datetime(2021, 11, 28, 10, 0, tzinfo=UTC)
TEAMS = {
    "phc_one": Team(2, str(uuid.uuid4()), "org", "one", "phc_one", False, True, False),
    "phc_anon": Team(3, str(uuid.uuid4()), "org", "anon", "phc_anon", True, True, False),
}


async def team_by_token(token: str) -> Team | None:
    return TEAMS.get(token)


async def capture(
    payload: Any, query: dict[str, str] | None = None, form: dict[str, str] | None = None
) -> list[Any]:
    received = CaptureInput(payload, query or {}, form or {})
    return await captured_events(
        received, team_by_token=team_by_token, ip="1.2.3.4", site_url="http://localhost:3008", now=NOW
    )


async def refused(payload: Any, **kwargs: Any) -> CaptureError:
    with pytest.raises(CaptureError) as caught:
        await capture(payload, **kwargs)
    return caught.value


def event(name: str = "$pageview", **fields: Any) -> dict[str, Any]:
    return {"event": name, "distinct_id": "user", **fields}


async def test_a_single_event_with_its_token_in_properties() -> None:
    (captured,) = await capture(event(properties={"token": "phc_one", "x": 1}))
    assert captured.team_id == 2
    assert captured.distinct_id == "user"
    assert captured.ip == "1.2.3.4"
    assert captured.site_url == "http://localhost:3008"
    assert captured.now == "2021-11-28T10:00:00+00:00"
    assert captured.sent_at is None
    # The distinct id travels beside `data`, as the server decided it (see message_fields).
    assert captured.data == {
        "event": "$pageview",
        "properties": {"token": "phc_one", "x": 1},
        "uuid": captured.uuid,
    }
    assert uuid.UUID(captured.uuid).version == 7


async def test_a_batch_wrapper_as_posthog_python_sends_it() -> None:
    payload = {
        "batch": [event("a"), event("b", properties=None)],
        "api_key": "phc_one",
        "sent_at": "2021-11-28T10:00:01.5+00:00",
    }
    first, second = await capture(payload)
    assert [first.data["event"], second.data["event"]] == ["a", "b"]
    assert second.data["properties"] == {}
    assert first.sent_at == second.sent_at == "2021-11-28T10:00:01.500000+00:00"


async def test_a_token_given_once_for_the_request_is_looked_up_once() -> None:
    asked: list[str] = []

    async def counting(token: str) -> Team | None:
        asked.append(token)
        return TEAMS.get(token)

    received = CaptureInput({"batch": [event("a"), event("b"), event("c")], "api_key": "phc_one"}, {}, {})
    events = await captured_events(received, team_by_token=counting, ip=None, site_url="", now=NOW)
    assert [e.team_id for e in events] == [2, 2, 2]
    assert asked == ["phc_one"]
    # Its team is every event's: a token inside an event does not move that event to another team.
    received = CaptureInput({"batch": [event("a", api_key="phc_anon")], "api_key": "phc_one"}, {}, {})
    (only,) = await captured_events(received, team_by_token=counting, ip=None, site_url="", now=NOW)
    assert only.team_id == 2


async def test_a_list_with_a_token_per_event_and_one_in_the_query() -> None:
    events = await capture([event("a", api_key="phc_one"), event("b", token="phc_anon")])
    assert [e.team_id for e in events] == [2, 3]
    assert events[1].ip is None  # the team anonymizes IPs
    from_query = await capture([event("a"), event("b")], query={"token": "phc_one"})
    assert [e.team_id for e in from_query] == [2, 2]
    from_form = await capture(event("a"), form={"api_key": "phc_one"})
    assert from_form[0].team_id == 2


@pytest.mark.parametrize(
    ("sent_at", "expected"),
    [
        ("1638093600000", "2021-11-28T10:00:00+00:00"),  # posthog-js `_`: milliseconds
        ("1638093600", "2021-11-28T10:00:00+00:00"),  # seconds
        ("2021-11-28T10:00:00Z", "2021-11-28T10:00:00+00:00"),
        ("2021-11-28T10:00:00", "2021-11-28T10:00:00+00:00"),  # naive means UTC
        ("yesterday", None),  # unreadable: ignored, the events are kept
    ],
)
async def test_sent_at_forms(sent_at: str, expected: str | None) -> None:
    (captured,) = await capture(event(api_key="phc_one"), query={"_": sent_at})
    assert captured.sent_at == expected


async def test_distinct_id_sources_and_length() -> None:
    (a,) = await capture({"event": "x", "$distinct_id": 42, "api_key": "phc_one"})
    (b,) = await capture({"event": "x", "properties": {"distinct_id": "p"}, "api_key": "phc_one"})
    (c,) = await capture({"event": "x", "distinct_id": "d" * 300, "api_key": "phc_one"})
    assert (a.distinct_id, b.distinct_id, len(c.distinct_id)) == ("42", "p", 200)


async def test_a_client_uuid_is_kept_so_its_retries_store_once() -> None:
    given = str(uuid.uuid4())
    (captured,) = await capture(event(api_key="phc_one", uuid=given.upper()))
    assert captured.uuid == captured.data["uuid"] == given


def _as_uuid_parses_it(text: str) -> str | None:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.uuids().map(str),
        st.uuids().map(lambda value: str(value).upper()),
        st.uuids().map(lambda value: value.hex),
        st.uuids().map(lambda value: f"{{{value}}}"),
        st.uuids().map(lambda value: f"urn:uuid:{value}"),
        st.uuids().map(lambda value: f"{value}\n"),
        st.from_regex(r"[0-9a-fA-F-]{30,40}", fullmatch=True),
        st.text(min_size=1, max_size=40),
    )
)
async def test_a_client_uuid_is_kept_in_the_canonical_form_or_refused_as_uuid_reads_it(text: str) -> None:
    """The canonical form is kept without parsing it; every other form is read as uuid.UUID reads it."""
    expected = _as_uuid_parses_it(text)
    if expected is None:
        assert (await refused(event(api_key="phc_one", uuid=text))).body["attr"] == "uuid"
    else:
        (captured,) = await capture(event(api_key="phc_one", uuid=text))
        assert captured.uuid == captured.data["uuid"] == expected


async def test_missing_and_unknown_tokens_are_401() -> None:
    missing = await refused(event())
    assert (missing.status, missing.body["code"]) == (401, "missing_api_key")
    assert missing.body["type"] == "authentication_error"
    unknown = await refused([event(api_key="phc_one"), event(api_key="phc_nope")])
    assert (unknown.status, unknown.body["code"]) == (401, "invalid_api_key")


@pytest.mark.parametrize(
    ("payload", "attr"),
    [
        ({"batch": [event("ok"), {"distinct_id": "u"}], "api_key": "phc_one"}, "event"),
        ({"batch": [event("ok"), event("")], "api_key": "phc_one"}, "event"),
        ({"batch": [{"event": "no id"}], "api_key": "phc_one"}, "distinct_id"),
        ({"batch": [event(distinct_id="")], "api_key": "phc_one"}, "distinct_id"),
        ({"batch": [event(properties=[1])], "api_key": "phc_one"}, "properties"),
        ({"batch": [event(uuid="not-a-uuid")], "api_key": "phc_one"}, "uuid"),
        ({"batch": [event(), 5], "api_key": "phc_one"}, None),
        ([], None),
    ],
)
async def test_one_bad_event_refuses_the_whole_request_with_400(payload: Any, attr: str | None) -> None:
    error = await refused(payload)
    assert error.status == 400
    assert error.body["attr"] == attr
    assert error.body["detail"]


_TOKEN_VALUES = st.sampled_from([None, "", "  ", "phc_a", " phc_b ", 5, ["phc_c"]])
_TOKEN_KEYS = st.fixed_dictionaries(
    {}, optional={"$token": _TOKEN_VALUES, "token": _TOKEN_VALUES, "api_key": _TOKEN_VALUES}
)


@given(
    _TOKEN_KEYS,
    st.one_of(st.none(), st.just([]), st.fixed_dictionaries({}, optional={"token": _TOKEN_VALUES})),
)
def test_an_events_token_is_the_first_of_its_four_places(fields: dict[str, Any], properties: Any) -> None:
    sent = {**fields, "properties": properties}
    in_order = [fields.get("$token"), fields.get("token"), fields.get("api_key")]
    in_order.append(properties.get("token") if isinstance(properties, dict) else None)
    expected = next((value.strip() for value in in_order if isinstance(value, str) and value.strip()), None)
    assert event_token(sent) == expected
