"""What a processEvent gives back must be storable, or that plugin's change is lost for that event
(an error the runner records) while the event goes on as it was. Checked in the real V8 isolate, with
generated changes, and on the shared gate both runtimes use."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin_server.plugins.events import checked_json_results, checked_result
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


async def test_a_lone_surrogate_fails_its_event_only_and_logs_keep_their_line() -> None:
    """JSON spells a lone surrogate as an escape that Python's JSON refuses: in one event's result it
    fails that event (not the batch, whose other events and isolate go on); in a log line it is
    written as U+FFFD."""
    lines: list[str] = []
    logger = SimpleNamespace(log=lines.append)
    source = r"""
    let calls = 0
    exports.processEvent = function (event) {
        calls++
        console.log('a\ud800b' + '\\ud800' + '\udc00\ud800')
        if (event.properties.odd) event.properties.text = 'x\ud800'
        event.properties.calls = calls
        return event
    }
    """
    async with loaded_plugin(source, logger=logger) as plugin:
        events = [{**BEFORE, "properties": {"odd": index == 1}} for index in range(3)]
        first, refused, last = await plugin.process_events(events, frozenset())
        (again,) = await plugin.process_events([BEFORE], frozenset())
    assert isinstance(refused, PluginError) and "lone surrogate" in str(refused)
    assert isinstance(first, dict) and isinstance(last, dict) and isinstance(again, dict)
    assert (first["properties"]["calls"], last["properties"]["calls"], again["properties"]["calls"]) == (
        1,
        3,
        4,
    )
    assert lines[0] == "a\ufffdb\\ud800\ufffd\ufffd"


def test_results_checked_at_once_refuse_the_unstorable_ones_only() -> None:
    """checked_json_results writes the batch once; when that finds nesting orjson cannot write or a NUL,
    each result is checked alone, and only those are refused."""
    deep: Any = "bottom"
    for _ in range(300):
        deep = [deep]
    fine = {**BEFORE, "properties": {"text": "a \\u0000 that is text"}}
    results = [fine, {**BEFORE, "properties": {"deep": deep}}, {**BEFORE, "distinct_id": "d\x00"}, None]
    outcomes = checked_json_results([BEFORE] * 4, results)
    assert outcomes[0] == fine and outcomes[3] is None
    assert all(isinstance(outcome, PluginError) for outcome in outcomes[1:3])
    assert isinstance(
        checked_json_results([BEFORE, BEFORE], [fine, {**BEFORE, "team_id": 3}])[1], PluginError
    )
