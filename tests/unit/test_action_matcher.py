"""Which events match which action steps: the original's action-matcher cases as the reference."""

from __future__ import annotations

import time
from typing import Any

import pytest

from plugin_server.actions.js_compare import casting_compare
from plugin_server.actions.matcher import TeamActions
from plugin_server.actions.models import Action, ActionStep, EventFacts, Person
from plugin_server.actions.selector import parse_selector, selector_matches
from plugin_server.ingestion.types import Element


def team_actions(*steps_of_actions: list[dict[str, Any]]) -> TeamActions:
    actions = []
    for action_id, steps in enumerate(steps_of_actions, start=1):
        built = tuple(
            ActionStep(id=action_id * 100 + i, action_id=action_id, **step) for i, step in enumerate(steps)
        )
        actions.append(Action(id=action_id, team_id=2, name=f"action {action_id}", steps=built))
    return TeamActions(actions)


def matched(
    actions: TeamActions,
    *,
    event: str = "$pageview",
    properties: dict[str, Any] | None = None,
    elements: list[Element] | None = None,
    person: Person | None = None,
) -> list[int]:
    props = {"$current_url": "http://example.com/foo/", **(properties or {})}
    return [a.id for a in actions.match(EventFacts(event, props, elements or [], person))]


# The original's property values, each named as its tests named the event.
VALUES: dict[str, dict[str, Any]] = {
    "bar": {"foo": "bar"},
    "bar+pol": {"foo": "bar", "pol": "pot"},
    "baR": {"foo": "baR"},
    "baz": {"foo": "baz"},
    "barabara": {"foo": "barabara"},
    "rabarbar": {"foo": "rabarbar"},
    "7": {"foo": 7},
    "nothing": {},
    "fig": {"fig": 999},
    "true": {"foo": True},
    "null": {"foo": None},
}
ALL = set(VALUES)
STRINGS_WITH_BAR = {"bar", "bar+pol", "baR", "barabara", "rabarbar"}

OPERATOR_CASES: list[tuple[str, Any, set[str]]] = [
    ("exact", "bar", {"bar", "bar+pol"}),
    (None, "bar", {"bar", "bar+pol"}),  # no operator means exact
    ("is_not", "bar", ALL - {"bar", "bar+pol"}),
    ("icontains", "bar", STRINGS_WITH_BAR),
    ("not_icontains", "bar", ALL - STRINGS_WITH_BAR),
    ("regex", "^bar", {"bar", "bar+pol", "barabara"}),
    ("regex", "(?:.+bar|[A-Z])", {"baR", "barabara", "rabarbar"}),
    ("not_regex", "^bar", ALL - {"bar", "bar+pol", "barabara"}),
    ("not_regex", "(?:.+bar|[A-Z])", ALL - {"baR", "barabara", "rabarbar"}),
    ("is_set", None, ALL - {"nothing", "fig"}),
    ("is_not_set", None, {"nothing", "fig"}),
]


@pytest.mark.parametrize("kind", ["event", "person"])
@pytest.mark.parametrize(("operator", "value", "expected"), OPERATOR_CASES)
def test_property_operators(kind: str, operator: str | None, value: Any, expected: set[str]) -> None:
    filter_: dict[str, Any] = {"type": kind, "key": "foo", "value": value}
    if operator:
        filter_["operator"] = operator
    actions = team_actions([{"properties": [filter_]}])
    got = set()
    for name, properties in VALUES.items():
        if kind == "event":
            hit = matched(actions, properties=properties)
        else:
            hit = matched(actions, person=Person(id=1, properties=properties))
        if hit:
            got.add(name)
    assert got == expected


@pytest.mark.parametrize(
    ("operator", "expected"),
    [("gt", {"7", "9999999"}), ("lt", {"-1", "true"})],  # true counts as 1
)
def test_greater_and_less_than(operator: str, expected: set[str]) -> None:
    actions = team_actions(
        [{"properties": [{"type": "event", "key": "foo", "value": 5, "operator": operator}]}]
    )
    values: dict[str, Any] = {
        **{name: props.get("foo") for name, props in VALUES.items() if "foo" in props},
        "-1": -1,
        "5": 5,
        "9999999": 9999999,
    }
    got = {name for name, value in values.items() if matched(actions, properties={"foo": value})}
    assert got == expected
    assert matched(actions, properties={}) == []


def test_no_person_matches_only_negative_operators() -> None:
    actions = team_actions(
        [{"properties": [{"type": "person", "key": "foo", "value": "bar", "operator": "is_not"}]}],
        [{"properties": [{"type": "person", "key": "foo", "value": "bar"}]}],
    )
    assert matched(actions) == [1]


def test_action_without_steps_matches_nothing() -> None:
    assert matched(team_actions([])) == []


@pytest.mark.parametrize("url_matching", ["contains", "", None])
def test_url_contains(url_matching: str | None) -> None:
    actions = team_actions([{"url": "example.com", "url_matching": url_matching, "event": "$pageview"}])
    assert matched(actions, properties={"$current_url": "http://posthog.com/pricing"}) == []
    assert matched(actions, properties={"$current_url": "https://example.com/"}) == [1]


def test_url_contains_like_wildcards() -> None:
    actions = team_actions([{"url": "exampl_.com/%.html", "event": "$pageview"}])
    assert matched(actions, properties={"$current_url": "https://example.com/"}) == []
    assert matched(actions, properties={"$current_url": "https://example.com/index.html"}) == [1]
    assert matched(actions, properties={"$current_url": "https://exampl-.com/a/b.html"}) == [1]


def test_url_contains_escapes_regex_syntax_and_stays_linear() -> None:
    actions = team_actions([{"url": "shop.test/(a)[b]?x=_%"}], [{"url": "%a%a%a%a%a%b"}])
    assert matched(actions, properties={"$current_url": "https://shop.test/(a)[b]?x=1/2"}) == [1]
    assert matched(actions, properties={"$current_url": "https://shopxtest/(a)[b]?x=1"}) == []
    started = time.perf_counter()
    assert matched(actions, properties={"$current_url": "a" * 100_000}) == []  # Python's re would take ages
    assert time.perf_counter() - started < 1


def test_url_regex_is_re2() -> None:
    actions = team_actions(
        [
            {
                "url": r"^https?:\/\/example\.com\/\d+(\/[a-r]*\/?)?$",
                "url_matching": "regex",
                "event": "$pageview",
            }
        ],
        [{"url": r"(?=look)ahead", "url_matching": "regex"}],  # not RE2: never matches
    )
    for url in ("https://example.com/23/hello", "https://example.com/3/abc/"):
        assert matched(actions, properties={"$current_url": url}) == [1]
    for url in (
        "https://example.com/3/xyz/",
        "https://example.com/",
        "https://example.com/uno/dos/",
        "https://example.com/1foo/",
        "https://example.com/3/abc/\n",  # RE2's $ is the end of text, not before a final newline
        "lookahead",
    ):
        assert matched(actions, properties={"$current_url": url}) == []


def test_url_exact() -> None:
    actions = team_actions(
        [{"url": "https://www.mozilla.org/de/", "url_matching": "exact", "event": "$pageview"}]
    )
    assert matched(actions, properties={"$current_url": "https://www.mozilla.org/de/"}) == [1]
    assert matched(actions, properties={"$current_url": "https://www.mozilla.org/de"}) == []
    assert matched(actions, properties={"$current_url": "https://www.mozilla.org/de/firefox/"}) == []


def test_url_needs_a_string_url() -> None:
    actions = team_actions([{"url": "example"}])
    assert matched(actions, properties={"$current_url": 5}) == []
    assert matched(actions, properties={"$current_url": None}) == []


def test_event_name_and_url() -> None:
    name_only = team_actions([{"event": "meow"}])
    assert matched(name_only, event="meow") == [1]
    assert matched(name_only, event="$meow") == []
    assert matched(name_only, event="WOOF") == []
    both = team_actions([{"event": "meow", "url_matching": "contains", "url": "pets.com/"}])
    assert matched(both, event="meow", properties={"$current_url": "http://www.pets.com/"}) == [1]
    assert matched(both, event="meow", properties={"$current_url": "https://pets.com/food"}) == [1]
    assert matched(both, event="$meow", properties={"$current_url": "https://xyz.pets.com/"}) == []
    assert matched(both, event="meow", properties={"$current_url": "https://www.pets.com.de/"}) == []
    assert matched(both, event="meow", properties={"$current_url": "https://www.pets.co"}) == []


def test_cohort_filters() -> None:
    actions = team_actions(
        [{"properties": [{"type": "cohort", "key": "id", "value": 7}]}],
        [{"properties": [{"type": "cohort", "key": "id", "value": "all"}]}],
        [{"properties": [{"type": "cohort", "key": "id", "value": "7"}]}],
        [{"properties": [{"type": "cohort", "key": "id", "value": "seven"}]}],  # invalid: never matches
    )
    assert actions.cohort_ids == {7}
    assert matched(actions, person=Person(id=1, properties={}, cohorts=frozenset({7}))) == [1, 2, 3]
    assert matched(actions, person=Person(id=1, properties={}, cohorts=frozenset({8}))) == [2]
    assert matched(actions) == [2]
    assert actions.needs_person("anything")


def h(tag: str, **fields: Any) -> Element:
    return Element(tag_name=tag, **fields)


def test_element_href() -> None:
    actions = team_actions([{"href": "https://example.com/"}])
    link = h("a", href="https://example.com/")
    assert matched(actions, elements=[h("h1", attr_class=["headline"]), link, h("main")]) == [1]
    assert matched(actions, elements=[link, h("h1"), h("main")]) == [1]
    assert matched(actions, elements=[h("span"), h("h1"), h("main")]) == []


def test_element_text_and_tag_on_one_element() -> None:
    actions = team_actions([{"tag_name": "h1", "text": "Hallo!"}])
    link = h("a", href="https://example.com/")
    assert matched(actions, elements=[h("h1", text="Hallo!"), link, h("main")]) == [1]
    assert matched(actions, elements=[h("h3", text="Hallo!"), link, h("main")]) == []
    assert matched(actions, elements=[h("h1", text="Bye"), h("h3", text="Hallo!"), h("main")]) == []


def test_element_selectors_in_steps_and_filters() -> None:
    actions = team_actions(
        [{"selector": "main h1.headline"}],
        [{"selector": "main > h1.headline"}],
        [{"selector": 'main > a[href="https://example.com/"]'}],
        [{"properties": [{"type": "element", "key": "selector", "value": ["main h1.headline"]}]}],
        [{"properties": [{"type": "element", "key": "selector", "value": ""}]}],
        [{"properties": [{"type": "element", "key": "selector", "value": None}]}],
        [{"properties": [{"type": "element", "key": "selector"}]}],
    )
    link = h("a", href="https://example.com/")
    assert matched(actions, elements=[h("h1", attr_class=["headline"]), link, h("main")]) == [1, 3, 4]
    assert matched(actions, elements=[h("h1", attr_class=["oof"]), link, h("main")]) == [3]
    assert matched(actions, elements=[h("h1", attr_class=["headline"]), h("main")]) == [1, 2, 4]


def test_element_property_filter() -> None:
    actions = team_actions([{"properties": [{"type": "element", "key": "tag_name", "value": "button"}]}])
    assert matched(actions, elements=[h("span"), h("button")]) == [1]
    assert matched(actions, elements=[h("span")]) == []


def test_casting_across_steps() -> None:
    actions = team_actions(
        [
            {"event": "tenet"},
            {
                "properties": [
                    {"key": "insight", "type": "event", "value": ["STICKINESS"], "operator": "exact"},
                    {
                        "key": "total_event_action_filters_count",
                        "type": "event",
                        "value": "0",
                        "operator": "exact",
                    },
                    {"key": "total_event_actions_count", "type": "event", "value": "0", "operator": "gt"},
                ]
            },
        ]
    )
    properties = {
        "insight": "STICKINESS",
        "total_event_action_filters_count": 0,
        "total_event_actions_count": 4,
    }
    assert matched(actions, event="meow", properties=properties) == [1]
    assert matched(actions, event="meow", properties={**properties, "total_event_actions_count": 0}) == []
    assert matched(actions, event="tenet") == [1]


def test_invalid_property_regex_fails_the_step_only() -> None:
    actions = team_actions(
        [
            {"properties": [{"type": "event", "key": "foo", "value": "(", "operator": "not_regex"}]},
            {"event": "$pageview"},
        ]
    )
    assert matched(actions, properties={"foo": "x"}) == [1]


SELECTOR_ELEMENTS = {
    "attribute": [
        h("h1", attr_class=["headline"], attributes={"attr__data-attr": "xyz"}),
        h("div", attr_class=["top"]),
        h("div"),
        h("main"),
    ],
    "three": [h("h1", attr_class=["headline"]), h("div", attr_class=["top"]), h("main")],
    "four": [
        h("h1", attr_class=["headline"]),
        h("div", attr_class=["inner"]),
        h("div", attr_class=["outer"]),
        h("main"),
    ],
    "seven": [h("span"), h("div"), h("a"), h("div"), h("div"), h("aside"), h("section")],
    "nth": [h("span", nth_child=2, nth_of_type=1), h("section")],
}
SELECTOR_CASES = [
    ("attribute", "[data-attr='xyz']", True),
    ("attribute", "h1[data-attr='xyz']", True),
    ("attribute", ".headline[data-attr='xyz']", True),
    ("attribute", "main [data-attr='xyz']", True),
    ("attribute", ".top [data-attr='xyz']", True),
    ("attribute", "[data-attr='foo']", False),
    ("attribute", "main[data-attr='xyz']", False),
    ("attribute", "div[data-attr='xyz']", False),
    ("three", "main h1", True),
    ("three", "main .headline", True),
    ("three", "h1 div", False),
    ("three", ".top main", False),
    ("three", "main div", True),
    ("three", "main .top", True),
    ("three", "div h1", True),
    ("three", "div .headline", True),
    ("three", "main > h1", False),
    ("three", "main > .headline", False),
    ("three", "main > .top > h1", True),
    ("three", "h1 > div", False),
    ("three", ".top > main", False),
    ("three", "main > div", True),
    ("three", "main > .top", True),
    ("three", "div > h1", True),
    ("three", "div > .headline", True),
    ("four", "main > h1", False),
    ("four", "main > .inner", False),
    ("four", "main > .outer > .inner > h1", True),
    ("four", "main > .inner > h1", False),
    ("four", "main > .outer > h1", False),
    ("four", "h1 > div", False),
    ("four", "outer > main", False),
    ("four", "main > div", True),
    ("four", "main > .outer", True),
    ("four", "div > h1", True),
    ("four", ".inner > .headline", True),
    ("seven", "aside div > span", True),
    ("nth", "section > span:nth-child(2):nth-of-type(1)", True),
    ("nth", "section > span:nth-child(1):nth-of-type(1)", False),
    ("nth", "section > span:nth-child(2):nth-of-type(3)", False),
    # The original's parser hung on these; here the unsupported part is ignored.
    ("nth", "section > span:nth-last-child(2)", True),
    ("nth", "section > span:nth-child(0)", True),
    ("three", "main > * > h1", True),
    ("three", r"div.to\p", True),
]


@pytest.mark.parametrize(("elements", "selector", "expected"), SELECTOR_CASES)
def test_selector(elements: str, selector: str, expected: bool) -> None:
    assert selector_matches(parse_selector(selector), SELECTOR_ELEMENTS[elements]) is expected


def test_selector_id_is_lowercased() -> None:
    assert parse_selector('button[id="Buy"]')[0].attr_id == "buy"


CASTING_CASES = [
    (2, "2", "exact", True),
    ("2", 2, "exact", True),
    (True, "true", "exact", True),
    (True, True, "exact", True),
    ("90", "90", "exact", True),
    ("1", True, "exact", True),
    ("1", "true", "exact", False),
    ("1", False, "exact", False),
    (False, "1", "exact", False),
    (False, "true", "exact", False),
    ("0", "true", "exact", False),
    ("1", "false", "exact", False),
    (2, "2", "lt", False),
    ("2", 2, "lt", False),
    ("1", "true", "lt", False),
    (True, "true", "lt", False),
    (True, True, "lt", False),
    ("90", "90", "lt", False),
    ("1", True, "lt", False),
    ("1", False, "lt", False),
    (False, "1", "lt", True),
    (False, "true", "lt", True),
    ("2", 3, "lt", True),
    ("445.3", 9099.2, "lt", True),
    (2, "2", "gt", False),
    ("2", 2, "gt", False),
    ("1", "true", "gt", False),
    (True, "true", "gt", False),
    (True, True, "gt", False),
    ("90", "90", "gt", False),
    ("1", True, "gt", False),
    (False, "1", "gt", False),
    (False, "true", "gt", False),
    ("2", 3, "gt", False),
    ("445.3", 9099.2, "gt", False),
    ("1", False, "gt", True),
    (True, "-1", "gt", True),
    (1, "false", "gt", True),
    (333, "2", "gt", True),
    ("9032.3", -1.2, "gt", True),
    (None, "bar", "is_not", True),
    (None, None, "exact", True),
    ("", 0, "exact", True),  # Number("") is 0
    ("0x10", 16, "exact", True),
    ("1_000", 1000, "exact", False),
]


@pytest.mark.parametrize(("a", "b", "operator", "expected"), CASTING_CASES)
def test_casting_compare(a: Any, b: Any, operator: str, expected: bool) -> None:
    assert casting_compare(a, b, operator) is expected
