"""Autocapture elements (reference section 4.5), with the original's test values."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin_server.ingestion.elements import (
    chain_to_elements,
    elements_from_properties,
    elements_hash,
    elements_to_chain,
)
from plugin_server.ingestion.types import Element
from plugin_server.jsvalues import js_string

# The two elements of the original's 'capture new person' test (tests/shared/process-event.ts).
CAPTURED = [
    {"tag_name": "a", "nth_child": 1, "nth_of_type": 2, "attr__class": "btn btn-sm"},
    {"tag_name": "div", "nth_child": 1, "nth_of_type": 2, "$el_text": "💻"},
]

# The elements of the original's tests/clickhouse/ingestion-utils.test.ts.
CHAIN_ELEMENTS = [
    Element(
        tag_name="a",
        href="/a-url",
        attr_class=["small"],
        text="bla bla",
        attributes={
            "prop": "value",
            "number": 33,
            "data-attr": 'something " that; could mess up',
            "style": "min-height: 100vh;",
        },
        nth_child=1,
        nth_of_type=0,
    ),
    Element(tag_name="button", attr_class=["btn", "btn-primary"], nth_child=0, nth_of_type=0),
    Element(tag_name="div", nth_child=0, nth_of_type=0),
    Element(tag_name="div", nth_child=0, nth_of_type=0, attr_id="nested"),
]
CHAIN = ";".join(
    [
        'a.small:data-attr="something \\" that; could mess up"href="/a-url"nth-child="1"nth-of-type="0"'
        'number="33"prop="value"style="min-height: 100vh;"text="bla bla"',
        'button.btn.btn-primary:nth-child="0"nth-of-type="0"',
        'div:nth-child="0"nth-of-type="0"',
        'div:attr_id="nested"nth-child="0"nth-of-type="0"',
    ]
)


class TestElementsFromProperties:
    def test_maps_the_autocapture_keys(self) -> None:
        elements = elements_from_properties(
            [
                {
                    "tag_name": "a",
                    "$el_text": "Sign up",
                    "attr__href": "/signup",
                    "attr__class": "btn btn-sm",
                    "attr__id": "cta",
                    "attr__data-x": "1",
                    "nth_child": 1,
                    "nth_of_type": 2,
                    "not_an_attribute": "dropped",
                }
            ]
        )
        assert elements == [
            Element(
                tag_name="a",
                text="Sign up",
                href="/signup",
                attr_id="cta",
                attr_class=["btn", "btn-sm"],
                nth_child=1,
                nth_of_type=2,
                attributes={
                    "attr__href": "/signup",
                    "attr__class": "btn btn-sm",
                    "attr__id": "cta",
                    "attr__data-x": "1",
                },
                order=0,
            )
        ]

    def test_order_is_the_position(self) -> None:
        elements = elements_from_properties(CAPTURED)
        assert [element.order for element in elements] == [0, 1]
        assert elements[0].tag_name == "a"
        assert elements[0].attr_class == ["btn", "btn-sm"]
        assert elements[1].text == "💻"

    def test_long_text_and_href_are_cut(self) -> None:
        """The original's 'long htext' test."""
        [element] = elements_from_properties(
            [
                {
                    "tag_name": "a",
                    "$el_text": "a" * 2050,
                    "attr__href": "a" * 2050,
                    "nth_child": 1,
                    "nth_of_type": 2,
                    "attr__class": "btn btn-sm",
                }
            ]
        )
        assert element.text is not None and len(element.text) == 400
        assert element.href is not None and len(element.href) == 2048
        assert element.attributes["attr__href"] == "a" * 2050  # attributes keep the full value

    def test_missing_values_are_none(self) -> None:
        [element] = elements_from_properties([{"tag_name": "div"}])
        assert element == Element(tag_name="div", attributes={}, order=0)

    def test_classes_are_sorted_as_the_original_stored_them(self) -> None:
        [element] = elements_from_properties([{"attr__class": "z-10 btn  a"}])
        assert element.attr_class == ["", "a", "btn", "z-10"]

    def test_loosely_typed_values_are_normalised(self) -> None:
        [element] = elements_from_properties(
            [
                {
                    "tag_name": "li",
                    "nth_child": "3",
                    "nth_of_type": 1.0,
                    "$el_text": 42,
                    "attr__class": ["b", "a"],
                }
            ]
        )
        assert (element.nth_child, element.nth_of_type, element.text, element.attr_class) == (
            3,
            1,
            "42",
            ["a", "b"],
        )
        [element] = elements_from_properties([{"nth_child": "first", "nth_of_type": True}])
        assert (element.nth_child, element.nth_of_type) == (None, None)

    def test_items_that_are_not_objects_are_skipped(self) -> None:
        elements = elements_from_properties([None, {"tag_name": "a"}, "span"])  # type: ignore[list-item]
        assert [(element.tag_name, element.order) for element in elements] == [("a", 0)]

    def test_does_not_change_its_input(self) -> None:
        raw = copy.deepcopy(CAPTURED)
        elements_from_properties(raw)
        assert raw == CAPTURED


class TestChain:
    def test_original_chain(self) -> None:
        assert elements_to_chain(CHAIN_ELEMENTS) == CHAIN

    def test_original_chain_parsed_back(self) -> None:
        elements = chain_to_elements(CHAIN)
        assert len(elements) == 4
        first = elements[0]
        assert (first.tag_name, first.href, first.attr_class, first.text) == (
            "a",
            "/a-url",
            ["small"],
            "bla bla",
        )
        assert (first.nth_child, first.nth_of_type, first.order) == (1, 0, 0)
        # The original kept `\"` here; this parser undoes the escape, so the chain round-trips.
        assert first.attributes == {
            "prop": "value",
            "number": "33",
            "data-attr": 'something " that; could mess up',
            "style": "min-height: 100vh;",
        }
        assert elements[1].attr_class == ["btn", "btn-primary"]
        assert elements[2].attr_class is None
        assert elements[3].attr_id == "nested"
        assert [element.order for element in elements] == [0, 1, 2, 3]

    def test_captured_elements_chain(self) -> None:
        assert elements_to_chain(elements_from_properties(CAPTURED)) == (
            'a.btn.btn-sm:attr__class="btn btn-sm"nth-child="1"nth-of-type="2";'
            'div:nth-child="1"nth-of-type="2"text="💻"'
        )

    def test_defaults_and_empty_values(self) -> None:
        element = Element(text="", href="", attr_class=[], attributes={"attr__title": "", "attr__x": None})
        assert elements_to_chain([element]) == ':attr__title=""attr__x="null"nth-child="0"nth-of-type="0"'
        [parsed] = chain_to_elements(elements_to_chain([element]))
        assert parsed.attributes == {"attr__title": "", "attr__x": "null"}
        assert parsed.tag_name is None

    def test_quotes_are_stripped_from_classes_and_sorted(self) -> None:
        element = Element(tag_name="p", attr_class=['z"z', "a"])
        assert elements_to_chain([element]) == 'p.a.zz:nth-child="0"nth-of-type="0"'
        assert element.attr_class == ['z"z', "a"]  # not sorted in place

    def test_classes_with_colons(self) -> None:
        chain = elements_to_chain(
            [Element(tag_name="div", attr_class=["md:flex", "hover:bg-red"], nth_child=2)]
        )
        assert chain == 'div.hover:bg-red.md:flex:nth-child="2"nth-of-type="0"'
        [parsed] = chain_to_elements(chain)
        assert (parsed.tag_name, parsed.attr_class, parsed.nth_child) == (
            "div",
            ["hover:bg-red", "md:flex"],
            2,
        )

    def test_values_with_newlines_backslashes_and_quotes(self) -> None:
        text = 'line 1\nline "2"; C:\\path\\" end'
        [parsed] = chain_to_elements(elements_to_chain([Element(tag_name="p", text=text)]))
        assert parsed.text == text

    def test_js_values_in_attributes(self) -> None:
        element = Element(
            attributes={"attr__a": True, "attr__b": 1.0, "attr__c": [1, None, "x"], "attr__d": {}}
        )
        assert elements_to_chain([element]) == (
            ':attr__a="true"attr__b="1"attr__c="1,,x"attr__d="[object Object]"nth-child="0"nth-of-type="0"'
        )

    def test_empty(self) -> None:
        assert elements_to_chain([]) == ""
        assert chain_to_elements("") == []


_NAME = st.text(alphabet=st.characters(codec="utf-8", exclude_characters='.;"'), min_size=1, max_size=8)
_VALUE = st.text(max_size=12).filter(lambda value: not value.endswith("\\"))
_KEY = st.from_regex(r"attr__[a-zA-Z0-9_-]{1,8}", fullmatch=True)


@st.composite
def _elements(draw: st.DrawFn) -> Element:
    return Element(
        tag_name=draw(st.none() | _NAME),
        text=draw(st.none() | _VALUE),
        href=draw(st.none() | _VALUE),
        attr_id=draw(st.none() | _VALUE),
        attr_class=draw(st.none() | st.lists(_NAME, min_size=1, max_size=3)),
        nth_child=draw(st.none() | st.integers(0, 50)),
        nth_of_type=draw(st.none() | st.integers(0, 50)),
        attributes=draw(st.dictionaries(_KEY, _VALUE | st.integers(), max_size=3)),
    )


# The first run on a machine builds Hypothesis's unicode tables, which its speed check would blame on us.
@settings(database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_elements(), max_size=4))
def test_chain_round_trip(elements: list[Element]) -> None:
    chain = elements_to_chain(elements)
    parsed = chain_to_elements(chain)
    assert elements_to_chain(parsed) == chain
    assert len(parsed) == len(elements)
    for index, (before, after) in enumerate(zip(elements, parsed, strict=True)):
        assert after.order == index
        assert after.tag_name == (before.tag_name or None)
        assert after.attr_class == (sorted(before.attr_class) if before.attr_class else None)
        assert after.text == (before.text or None)
        assert after.href == (before.href or None)
        assert after.attr_id == (before.attr_id or None)
        assert after.nth_child == (before.nth_child or 0)
        assert after.nth_of_type == (before.nth_of_type or 0)
        assert after.attributes == {key: js_string(value) for key, value in before.attributes.items()}


class TestHash:
    def test_original_value(self) -> None:
        """The hash the original's 'capture new person' test expects for its two elements."""
        assert elements_hash(elements_from_properties(CAPTURED)) == "0679137c0cd2408a2906839143e7a71f"

    def test_original_long_text_value(self) -> None:
        raw: list[dict[str, Any]] = [
            {
                "tag_name": "a",
                "$el_text": "a" * 2050,
                "attr__href": "a" * 2050,
                "nth_child": 1,
                "nth_of_type": 2,
                "attr__class": "btn btn-sm",
            }
        ]
        assert elements_hash(elements_from_properties(raw)) == "c2659b28e72835706835764cf7f63c2a"

    def test_original_first_team_event_value(self) -> None:
        raw = [{"tag_name": "a", "nth_child": 1, "nth_of_type": 2, "attr__class": "btn btn-sm"}]
        assert elements_hash(elements_from_properties(raw)) == "a89021a60b3497d24e93ae181fba01aa"

    def test_order_is_the_position_whatever_the_field_says(self) -> None:
        elements = elements_from_properties(CAPTURED)
        for element in elements:
            element.order = None
        assert elements_hash(elements) == "0679137c0cd2408a2906839143e7a71f"


class TestJsString:
    def test_values(self) -> None:
        assert [
            js_string(value) for value in ["x", 2, 2.0, 2.5, True, False, None, {"a": 1}, [1, "a", None]]
        ] == [
            "x",
            "2",
            "2",
            "2.5",
            "true",
            "false",
            "null",
            "[object Object]",
            "1,a,",
        ]
