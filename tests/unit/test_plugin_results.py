"""What a processEvent gives back must be storable, or that plugin's change is lost for that event
(an error the runner records) while the event goes on as it was. Checked in the real V8 isolate, with
generated changes, and on the shared gate both runtimes use."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin_server.plugins.events import checked_result
from plugin_server.plugins.instance import PluginError
from tests.js_support import loaded_plugin

BEFORE = {"event": "e", "distinct_id": "d", "team_id": 2, "uuid": str(uuid.uuid4()), "properties": {"a": 1}}

# A processEvent that applies the change it finds in the event's properties (`change`), writing
# "<NUL>" and "<SUR>" as a NUL character and a lone surrogate (what the server never hands a plugin).
APPLY_CHANGE = """
const odd = (v) => typeof v === 'string' ? v.replaceAll('<NUL>', '\\0').replaceAll('<SUR>', '\\ud800') : v
exports.processEvent = function (event) {
    const change = event.properties.change
    delete event.properties.change
    const value = Array.isArray(change.value) ? change.value.map(odd) : odd(change.value)
    if (change.path === 'properties') event.properties[odd(change.key)] = value
    else event[change.path] = value
    return event
}
"""

_TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=5)
_UNSTORABLE = st.one_of(
    st.builds(lambda n: {"path": "distinct_id", "value": "x" * n}, st.integers(201, 1000)),
    st.builds(lambda t: {"path": "distinct_id", "value": t + "<NUL>"}, _TEXT),
    st.builds(lambda t: {"path": "event", "value": "<NUL>" + t}, _TEXT),
    st.builds(lambda k: {"path": "properties", "key": k + "<NUL>", "value": 1}, _TEXT),
    st.builds(lambda t: {"path": "properties", "key": "k", "value": [t, "<NUL>"]}, _TEXT),
    st.builds(lambda t: {"path": "properties", "key": "k", "value": t + "<SUR>"}, _TEXT),
    st.builds(lambda t: {"path": "properties", "key": "<SUR>" + t, "value": 1}, _TEXT),
    st.builds(lambda team: {"path": "team_id", "value": team}, st.sampled_from([3, "2", None, 2.5])),
    st.just({"path": "uuid", "value": "not a uuid"}),
    st.just({"path": "event", "value": ""}),
    st.just({"path": "distinct_id", "value": None}),
)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(change=_UNSTORABLE)
async def test_an_unstorable_change_from_a_js_plugin_is_refused_and_the_event_kept(
    change: dict[str, Any],
) -> None:
    async with loaded_plugin(APPLY_CHANGE) as plugin:
        given_event = {**BEFORE, "properties": {"a": 1, "change": change}}
        (outcome,) = await plugin.process_events([given_event], frozenset())
    assert isinstance(outcome, PluginError), outcome


@settings(max_examples=40, deadline=None, database=None)
@given(
    distinct_id=st.text(min_size=1, max_size=200).filter(lambda t: "\x00" not in t),
    value=st.text().filter(lambda t: "\x00" not in t),
)
def test_a_storable_change_is_taken(distinct_id: str, value: str) -> None:
    """Text with a surrogate pair is fine; so is a backslash before `u0000` (not a NUL)."""
    result = {**BEFORE, "distinct_id": distinct_id, "properties": {"v": value, "w": "\\u0000"}}
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate drawn by hypothesis
        with pytest.raises(PluginError):
            checked_result(BEFORE, result)
        return
    assert checked_result(BEFORE, result) == result
