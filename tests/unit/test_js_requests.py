"""Requests into a real isolate (mini-racer) as the `this` of the runtime's entry (entry.py): any text
arrives intact, what Python cannot send fails its batch only, and a request's text is garbage that V8
collects (its heap limit is not reached by many batches that add up to more than the limit)."""

from __future__ import annotations

from typing import Any

from plugin_server.plugins.instance import PluginError
from plugin_server.plugins.js.runtime import MAX_REQUEST_BYTES, JSError, JSHeapLimitError
from tests.js_support import loaded_plugin

ECHO = """
exports.processEvent = function (event) {
    event.properties.length = event.properties.text.length
    return event
}
"""

TEXTS = [
    "plain ascii",
    "ünïcödé, 中文, emoji 😀🏳️‍🌈 and \U0010fffd",
    'quotes " and \\ backslashes \\u0000 spelled out, </script>',
    "line\nbreaks\r\tand\u2028separators\u2029",
    "control \x01\x1f\x7f characters",
    "\ufeffbyte order mark, \ufffd replacement",
]


def event(number: int, **properties: Any) -> dict[str, Any]:
    return {
        "event": "e",
        "distinct_id": f"person-{number}",
        "team_id": 2,
        "uuid": f"00000000-0000-0000-0000-{number:012d}",
        "properties": properties,
    }


async def test_any_text_arrives_intact_in_keys_and_values() -> None:
    events = [event(number, text=text, **{text: number}) for number, text in enumerate(TEXTS)]
    async with loaded_plugin(ECHO) as plugin:
        outcomes = await plugin.process_events(events, frozenset())
    for given, text, outcome in zip(events, TEXTS, outcomes, strict=True):
        assert isinstance(outcome, dict), outcome
        assert outcome["properties"] == {**given["properties"], "length": len(text.encode("utf-16-le")) // 2}


async def test_an_event_python_cannot_write_fails_its_batch_and_the_isolate_goes_on() -> None:
    async with loaded_plugin(ECHO) as plugin:
        outcomes = await plugin.process_events(
            [event(1, text="\ud800 lone"), event(2, text="fine")], frozenset()
        )
        assert all(isinstance(outcome, TypeError) for outcome in outcomes), outcomes
        (after,) = await plugin.process_events([event(3, text="fine")], frozenset())
    assert isinstance(after, dict) and after["properties"]["length"] == 4


async def test_values_that_are_not_json_are_refused_per_event() -> None:
    source = """
    exports.processEvent = function (event) {
        switch (event.properties.n) {
            case 0: event.properties.big = 10n; return event
            case 1: event.properties.f = () => 1; event.properties.u = undefined; event.properties.s = Symbol('s'); return event
            case 2: event.properties.nan = NaN; event.properties.date = new Date(0); event.properties.map = new Map([[1, 2]]); return event
            case 3: Object.defineProperty(event.properties, 'boom', { enumerable: true, get() { throw new Error('getter') } }); return event
            case 4: { let calls = 0; return { ...event, get team_id() { return calls++ ? 3 : 2 } } }
            default: return 'not an event'
        }
    }
    """
    async with loaded_plugin(source) as plugin:
        outcomes = await plugin.process_events([event(n, n=n) for n in range(6)], frozenset())
    assert isinstance(outcomes[0], JSError) and "BigInt" in str(outcomes[0])
    assert isinstance(outcomes[1], dict) and outcomes[1]["properties"] == {"n": 1}
    assert isinstance(outcomes[2], dict)
    assert outcomes[2]["properties"] == {"n": 2, "nan": None, "date": "1970-01-01T00:00:00.000Z", "map": {}}
    assert isinstance(outcomes[3], JSError) and str(outcomes[3]) == "getter"
    assert isinstance(outcomes[4], dict) and outcomes[4]["team_id"] == 2  # read once, when written as JSON
    assert isinstance(outcomes[5], PluginError) and "returned str" in str(outcomes[5])


async def test_request_text_is_garbage_that_v8_collects() -> None:
    """80 batches of 1 MB each through an isolate whose heap limit is 32 MB."""
    text = "é" + "x" * (1024 * 1024)
    async with loaded_plugin(ECHO) as plugin:
        for number in range(80):
            (outcome,) = await plugin.process_events([event(number, text=text)], frozenset())
            assert isinstance(outcome, dict) and outcome["properties"]["length"] == len(text), outcome


async def test_an_event_larger_than_the_heap_limit_costs_the_isolate_and_that_event_only() -> None:
    """The large event goes in a request of its own (see the next test), so the small one is run by
    the isolate made again after the loss."""
    async with loaded_plugin(ECHO) as plugin:
        large, small = await plugin.process_events(
            [event(1, text="x" * (48 * 1024 * 1024)), event(2, text="small")], frozenset()
        )
        assert isinstance(large, JSHeapLimitError), large
        assert isinstance(small, dict) and small["properties"]["length"] == 5
        (after,) = await plugin.process_events([event(3, text="small")], frozenset())
    assert isinstance(after, dict) and after["properties"]["length"] == 5


async def test_a_batch_goes_in_requests_that_the_heap_can_hold() -> None:
    """Forty events of 1 MB under the default 64 MB heap limit: as one request, its text, its events and
    their results would pass the limit; in requests of at most MAX_REQUEST_BYTES (with what each left
    collected before the next) every event gets its result, in order, batch after batch."""
    text = "x" * (1024 * 1024)
    assert 40 * len(text) > 64 * 1024 * 1024 // 2 > MAX_REQUEST_BYTES
    async with loaded_plugin(ECHO, heap_mb=64) as plugin:
        for _ in range(2):
            outcomes = await plugin.process_events([event(n, text=text, n=n) for n in range(40)], frozenset())
            assert [outcome["properties"]["n"] for outcome in outcomes] == list(range(40)), outcomes  # type: ignore[index]
