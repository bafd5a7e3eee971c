"""The database-free ingestion rules (reference section 4.2), with the original's examples."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin_server.ingestion.rules import (
    add_campaign_and_initial_properties,
    apply_ip,
    format_clickhouse_timestamp,
    format_iso,
    is_illegal_distinct_id,
    parse_timestamp,
    prepare_event,
)
from plugin_server.ingestion.types import Element, InvalidEvent

UUID = "017d7a3b-6f59-0000-2d7e-6d6a4e3c8f2b"
NOW = "2020-01-01T12:00:05.200Z"


def raw_event(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "distinct_id": "user-1",
        "ip": "127.0.0.1",
        "site_url": "https://example.com",
        "team_id": 2,
        "now": NOW,
        "sent_at": None,
        "uuid": UUID,
        "event": "$pageview",
        "properties": {"distinct_id": "user-1", "token": "phc_x"},
    }
    event.update(fields)
    return event


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class TestParseTimestamp:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2020-01-01T12:00:05.200Z", "2020-01-01T12:00:05.200"),
            ("2020-01-01T12:00:05.200+00:00", "2020-01-01T12:00:05.200"),
            ("2020-01-01T16:00:05+04:00", "2020-01-01T12:00:05"),
            ("2020-01-01T10:30:05.5-01:30", "2020-01-01T12:00:05.500"),
            ("2020-01-01T16:00:05+0400", "2020-01-01T12:00:05"),
            ("2020-01-01T12:00:05", "2020-01-01T12:00:05"),  # no offset: UTC
            ("2020-01-01 12:00:05.123", "2020-01-01T12:00:05.123"),
            ("2020-01-01", "2020-01-01T00:00:00"),
            ("2020-01-01T12:00:05.123456789Z", "2020-01-01T12:00:05.123"),  # cut to milliseconds
            ("2020-01-01T12:00:05.1239Z", "2020-01-01T12:00:05.123"),
            ("2020-01-01t12:00:05z", "2020-01-01T12:00:05"),
            (" 2020-01-01T12:00:05Z\n", "2020-01-01T12:00:05"),
            ("Wed, 01 Jan 2020 12:00:05 GMT", "2020-01-01T12:00:05"),
        ],
    )
    def test_strings(self, text: str, expected: str) -> None:
        parsed = parse_timestamp(text)
        assert parsed == utc(expected)
        assert parsed is not None and parsed.tzinfo is UTC

    def test_datetimes(self) -> None:
        assert parse_timestamp(datetime(2020, 1, 1, 12, 0, 5, 200999)) == utc("2020-01-01T12:00:05.200")
        plus_four = datetime(2020, 1, 1, 16, tzinfo=timezone(timedelta(hours=4)))
        assert parse_timestamp(plus_four) == utc("2020-01-01T12:00:00")

    def test_epoch_milliseconds_like_new_date(self) -> None:
        assert parse_timestamp(1577880005200) == utc("2020-01-01T12:00:05.200")
        assert parse_timestamp(1577880005200.9) == utc("2020-01-01T12:00:05.200")

    @pytest.mark.parametrize(
        "value",
        [
            None,
            "",
            "garbage",
            "2020-13-01",
            "2020-01-01T24:61:00",
            "9999-12-31T23:59:59-01:00",
            True,
            float("nan"),
            1e300,
            {},
            ["2020-01-01"],
        ],
    )
    def test_invalid(self, value: object) -> None:
        assert parse_timestamp(value) is None


class TestValidation:
    def test_rule_1_bad_uuid(self) -> None:
        with pytest.raises(InvalidEvent, match=r'^Not a valid UUID: "this is not an uuid"$'):
            prepare_event(raw_event(uuid="this is not an uuid"))
        with pytest.raises(InvalidEvent, match=r'^Not a valid UUID: "null"$'):
            prepare_event(raw_event(uuid=None))
        fullwidth_zero = "\uff10" + UUID[1:]  # a digit to Unicode, not to the pattern
        for bad in [
            UUID + "\n",
            UUID.replace("-", ""),
            UUID[:-1],
            UUID + "0",
            "{" + UUID + "}",
            "",
            fullwidth_zero,
        ]:
            with pytest.raises(InvalidEvent, match="Not a valid UUID"):
                prepare_event(raw_event(uuid=bad))

    def test_rule_1_uuid_is_case_insensitive_and_kept_as_given(self) -> None:
        assert prepare_event(raw_event(uuid=UUID.upper())).uuid == UUID.upper()

    def test_team_id(self) -> None:
        assert prepare_event(raw_event(team_id=2)).team_id == 2
        assert prepare_event(raw_event(team_id="2")).team_id == 2
        for bad in [None, "two", "2.0", " 2", True, 2.0]:
            with pytest.raises(InvalidEvent, match="team id"):
                prepare_event(raw_event(team_id=bad))

    def test_distinct_id_is_a_string_like_javascript_string(self) -> None:
        assert prepare_event(raw_event(distinct_id=2)).distinct_id == "2"
        assert prepare_event(raw_event(distinct_id=True)).distinct_id == "true"
        assert prepare_event(raw_event(distinct_id={"a": 1})).distinct_id == "[object Object]"

    def test_missing_distinct_id(self) -> None:
        with pytest.raises(InvalidEvent, match="distinct_id"):
            prepare_event(raw_event(distinct_id=None))
        event = raw_event()
        del event["distinct_id"]
        with pytest.raises(InvalidEvent, match="distinct_id"):
            prepare_event(event)

    def test_properties_must_be_an_object(self) -> None:
        assert prepare_event(raw_event(properties=None)).properties == {}
        with pytest.raises(InvalidEvent, match="properties"):
            prepare_event(raw_event(properties=["a"]))

    def test_carries_the_request_fields(self) -> None:
        prepared = prepare_event(raw_event())
        assert (prepared.ip, prepared.site_url, prepared.now) == (
            "127.0.0.1",
            "https://example.com",
            utc("2020-01-01T12:00:05.200"),
        )
        assert prepare_event(raw_event(ip="", site_url=None)).ip is None
        assert "$ip" not in prepare_event(raw_event()).properties  # added later, per team (rule 22)


class TestSetAndProperties:
    def test_rule_2_top_level_set_wins(self) -> None:
        """The original's '$set and $set_once merge with properties' test."""
        prepared = prepare_event(
            raw_event(
                **{
                    "$set": {"key1": "value1", "key2": "value2"},
                    "$set_once": {"key1_once": "value1", "key2_once": "value2"},
                    "properties": {
                        "distinct_id": "distinct_id1",
                        "$set": {"key2": "value3", "key3": "value4"},
                        "$set_once": {"key2_once": "value3", "key3_once": "value4"},
                    },
                }
            )
        )
        assert prepared.properties["$set"] == {"key1": "value1", "key2": "value2", "key3": "value4"}
        assert prepared.properties["$set_once"] == {
            "key1_once": "value1",
            "key2_once": "value2",
            "key3_once": "value4",
        }

    def test_rule_2_top_level_set_without_one_in_properties(self) -> None:
        prepared = prepare_event(raw_event(**{"$set": {"a": 1}, "$set_once": {}}))
        assert prepared.properties["$set"] == {"a": 1}
        assert prepared.properties["$set_once"] == {}  # an empty object is truthy in the original too

    def test_rule_3_set_is_kept_as_sent(self) -> None:
        properties = {"$set": {"a_prop": "test-1", "c_prop": "test-1"}, "$set_once": {"x": None}}
        prepared = prepare_event(raw_event(properties=properties))
        assert prepared.properties["$set"] == {"a_prop": "test-1", "c_prop": "test-1"}
        assert prepared.properties["$set_once"] == {"x": None}

    @pytest.mark.parametrize("top_level_set", [{"$set": {"key1": "value1"}}, {}])
    def test_input_is_not_changed(self, top_level_set: dict[str, Any]) -> None:
        properties = {
            "$set": {"key2": "value3"},
            "$set_once": {"key3": "value4"},
            "$elements": [{"tag_name": "a", "attr__class": "b a"}],
            "utm_source": "x",
            "$browser": "Chrome",
        }
        event = raw_event(**top_level_set, properties=properties)
        before = copy.deepcopy(event)
        prepared = prepare_event(event)
        apply_ip(prepared.properties, "1.2.3.4", False)
        add_campaign_and_initial_properties(prepared.properties)
        assert event == before
        assert prepared.properties["$set"]["utm_source"] == "x"


class TestEventName:
    def test_rule_4_object_name_is_json(self) -> None:
        assert (
            prepare_event(raw_event(event={"event name": "as object"})).event == '{"event name":"as object"}'
        )

    def test_rule_4_array_name_is_json(self) -> None:
        assert prepare_event(raw_event(event=["event name", "a list"])).event == '["event name","a list"]'

    def test_rule_4_other_values(self) -> None:
        assert [prepare_event(raw_event(event=value)).event for value in [5, True, None, "é"]] == [
            "5",
            "true",
            "null",
            "é",
        ]
        assert prepare_event(raw_event(event=datetime(2020, 1, 1))).event == "2020-01-01 00:00:00"

    def test_rule_4_long_name_is_cut_to_200(self) -> None:
        assert prepare_event(raw_event(event="E" * 300)).event == "E" * 200
        assert prepare_event(raw_event(event=["x" * 300])).event == '["' + "x" * 198

    def test_missing_name(self) -> None:
        event = raw_event()
        del event["event"]
        with pytest.raises(InvalidEvent, match="name"):
            prepare_event(event)


class TestElements:
    def test_rule_5_elements_are_removed_and_converted(self) -> None:
        properties = {
            "token": "x",
            "$elements": [
                {"tag_name": "a", "nth_child": 1, "nth_of_type": 2, "attr__class": "btn btn-sm"},
                {"tag_name": "div", "nth_child": 1, "nth_of_type": 2, "$el_text": "💻"},
            ],
        }
        prepared = prepare_event(raw_event(event="$autocapture", properties=properties))
        assert prepared.properties == {"token": "x"}
        assert prepared.elements == [
            Element(
                tag_name="a",
                attr_class=["btn", "btn-sm"],
                nth_child=1,
                nth_of_type=2,
                attributes={"attr__class": "btn btn-sm"},
                order=0,
            ),
            Element(tag_name="div", text="💻", nth_child=1, nth_of_type=2, attributes={}, order=1),
        ]

    def test_rule_5_empty_or_odd_elements_stay_in_properties(self) -> None:
        values: list[object] = [[], None, "a", {"tag_name": "a"}]
        for value in values:
            prepared = prepare_event(raw_event(properties={"$elements": value}))
            assert prepared.properties == {"$elements": value}
            assert prepared.elements == []


class TestTimestamp:
    def timestamp(self, **fields: Any) -> datetime:
        return prepare_event(raw_event(**fields)).timestamp

    def test_rule_6_sent_at_corrects_clock_skew(self) -> None:
        """The original's 'capture sent_at': the client clock is 1 day 2 hours ahead; the event
        happened 10 minutes before it was sent."""
        timestamp = self.timestamp(
            now=NOW, timestamp="2020-01-02T14:00:05.200Z", sent_at="2020-01-02T14:10:05.200Z"
        )
        assert timestamp == utc("2020-01-01T11:50:05.200")

    def test_rule_6_with_time_zones(self) -> None:
        """The original's 'capture sent_at no timezones': both in UTC+4, and mixed zones."""
        expected = utc("2020-01-01T11:50:05.200")
        assert self.timestamp(
            timestamp="2020-01-02T18:00:05.200+04:00", sent_at="2020-01-02T18:10:05.200+04:00"
        ) == (expected)
        assert (
            self.timestamp(timestamp="2020-01-02T18:00:05.200+04:00", sent_at="2020-01-02T14:10:05.200Z")
            == expected
        )
        plus_four = timezone(timedelta(hours=4))
        assert (
            self.timestamp(
                timestamp=datetime(2020, 1, 2, 18, 0, 5, 200000, tzinfo=plus_four),
                sent_at=datetime(2020, 1, 2, 18, 10, 5, 200000, tzinfo=plus_four),
            )
            == expected
        )

    def test_rule_6_without_offsets_both_are_utc(self) -> None:
        assert self.timestamp(timestamp="2020-01-02T14:00:05.200", sent_at="2020-01-02T14:10:05.200Z") == utc(
            "2020-01-01T11:50:05.200"
        )

    def test_rule_6_falls_back_to_the_timestamp_when_the_correction_overflows(self) -> None:
        timestamp = self.timestamp(timestamp="9999-01-01T00:00:00Z", sent_at="0001-01-02T00:00:00Z")
        assert timestamp == utc("9999-01-01T00:00:00")

    def test_rule_6_unreadable_sent_at_counts_as_absent(self) -> None:
        prepared = prepare_event(raw_event(timestamp="2020-01-02T14:00:05.200Z", sent_at="yesterday"))
        assert (prepared.sent_at, prepared.timestamp) == (None, utc("2020-01-02T14:00:05.200"))

    def test_rule_7_timestamp_without_sent_at_is_taken_as_given(self) -> None:
        """The original's 'capture no sent_at'."""
        assert self.timestamp(timestamp="2020-01-02T14:00:05.200Z") == utc("2020-01-02T14:00:05.200")
        assert self.timestamp(timestamp="2020-01-02T18:00:05.200+04:00") == utc("2020-01-02T14:00:05.200")

    def test_rule_8_offset(self) -> None:
        """The original's 'offset timestamp' and 'offset timestamp no sent_at' tests."""
        for sent_at in [NOW, None]:
            timestamp = self.timestamp(now=NOW, offset=150, sent_at=sent_at)
            assert format_iso(timestamp) == "2020-01-01T12:00:05.050Z"

    def test_rule_8_timestamp_beats_offset(self) -> None:
        assert self.timestamp(timestamp="2020-01-02T14:00:05.200Z", offset=150) == utc(
            "2020-01-02T14:00:05.200"
        )

    def test_rule_8_unreadable_timestamp_falls_back_to_offset(self) -> None:
        assert self.timestamp(timestamp="soon", offset=150, sent_at=NOW) == utc("2020-01-01T12:00:05.050")

    def test_rule_9_otherwise_now(self) -> None:
        assert self.timestamp() == utc("2020-01-01T12:00:05.200")
        for offset in [0, None, True, "150", float("nan"), 1e300]:
            assert self.timestamp(offset=offset) == utc("2020-01-01T12:00:05.200")
        assert self.timestamp(timestamp="") == utc("2020-01-01T12:00:05.200")

    def test_missing_or_unreadable_now_is_the_current_time(self) -> None:
        for now in [None, "not a date"]:
            before = datetime.now(UTC) - timedelta(milliseconds=1)
            prepared = prepare_event(raw_event(now=now))
            assert before <= prepared.now <= datetime.now(UTC)
            assert prepared.timestamp == prepared.now
            assert prepared.now.microsecond % 1000 == 0


_OFFSETS = st.builds(lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-23 * 60, 23 * 60))
_ANY_TIME = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.datetimes().map(lambda value: value.isoformat()),
    st.datetimes(timezones=_OFFSETS).map(lambda value: value.isoformat()),
    st.datetimes(timezones=st.none() | _OFFSETS),
    st.integers(),
    st.floats(),
    st.booleans(),
)


@settings(database=None, suppress_health_check=[HealthCheck.too_slow])
@given(now=_ANY_TIME, sent_at=_ANY_TIME, timestamp=_ANY_TIME, offset=_ANY_TIME)
def test_timestamps_never_crash(now: object, sent_at: object, timestamp: object, offset: object) -> None:
    prepared = prepare_event(raw_event(now=now, sent_at=sent_at, timestamp=timestamp, offset=offset))
    for value in (prepared.now, prepared.timestamp, prepared.sent_at):
        assert value is None or value.tzinfo is UTC
    assert len(format_clickhouse_timestamp(prepared.timestamp)) == 23


class TestFormats:
    def test_rule_10_clickhouse_format(self) -> None:
        assert format_clickhouse_timestamp(utc("2020-01-01T12:00:05.050")) == "2020-01-01 12:00:05.050"
        assert format_clickhouse_timestamp(utc("2020-01-01T12:00:05")) == "2020-01-01 12:00:05.000"
        assert (
            format_clickhouse_timestamp(datetime(2020, 1, 1, 12, 0, 5, 999999)) == "2020-01-01 12:00:05.999"
        )
        plus_four = datetime(2020, 1, 1, 16, tzinfo=timezone(timedelta(hours=4)))
        assert format_clickhouse_timestamp(plus_four) == "2020-01-01 12:00:00.000"
        assert format_clickhouse_timestamp(datetime(999, 1, 1, tzinfo=UTC)) == "0999-01-01 00:00:00.000"

    def test_rule_10_iso_format(self) -> None:
        assert format_iso(utc("2020-01-01T12:00:05.050")) == "2020-01-01T12:00:05.050Z"
        assert format_iso(datetime(2020, 1, 1, 12)) == "2020-01-01T12:00:00.000Z"
        plus_four = datetime(2020, 1, 1, 16, 0, 0, 123456, tzinfo=timezone(timedelta(hours=4)))
        assert format_iso(plus_four) == "2020-01-01T12:00:00.123Z"


class TestIllegalDistinctIds:
    @pytest.mark.parametrize(
        "distinct_id",
        [
            "",
            "  ",
            "\t\n",
            "anonymous",
            "Anonymous",
            "GUEST",
            "distinctid",
            "distinctId",
            "distinct_id",
            "id",
            "ID",
            "not_authenticated",
            "email",
            "undefined",
            "true",
            "False",
            "[object Object]",
            "NaN",
            "None",
            "none",
            "null",
            "0",
        ],
    )
    def test_rule_11_illegal(self, distinct_id: str) -> None:
        assert is_illegal_distinct_id(distinct_id)

    @pytest.mark.parametrize(
        "distinct_id",
        [
            "Nan",
            "nan",
            "NONE",
            "Null",
            "NULL",
            "00",
            "[object object]",
            "im an anonymous id",
            " anonymous",
            "user-1",
        ],
    )
    def test_rule_11_allowed(self, distinct_id: str) -> None:
        assert not is_illegal_distinct_id(distinct_id)


class TestIp:
    def test_rule_22_ip_capture(self) -> None:
        properties: dict[str, Any] = {}
        apply_ip(properties, "11.12.13.14", False)
        assert properties == {"$ip": "11.12.13.14"}

    def test_rule_22_no_ip(self) -> None:
        for ip in [None, ""]:
            properties: dict[str, Any] = {}
            apply_ip(properties, ip, False)
            assert "$ip" not in properties

    def test_rule_22_existing_ip_is_kept(self) -> None:
        properties = {"$ip": "1.0.0.1"}
        apply_ip(properties, "11.12.13.14", False)
        assert properties == {"$ip": "1.0.0.1"}

    def test_rule_22_anonymized(self) -> None:
        properties: dict[str, Any] = {}
        apply_ip(properties, "11.12.13.14", True)
        assert properties == {}
        properties = {"$ip": "1.0.0.1"}  # the original kept a client's $ip around the team's setting
        apply_ip(properties, "11.12.13.14", True)
        assert properties == {}


class TestCampaignAndInitialProperties:
    def test_rules_25_26_capture_new_person(self) -> None:
        """The original's 'capture new person' event, first capture."""
        properties: dict[str, Any] = {
            "distinct_id": 2,
            "token": "THIS IS NOT A TOKEN FOR TEAM 2",
            "$browser": "Chrome",
            "$current_url": "https://test.com",
            "$os": "Mac OS X",
            "$browser_version": False,
            "$initial_referring_domain": "https://google.com",
            "$initial_referrer_url": "https://google.com/?q=posthog",
            "utm_medium": "twitter",
            "gclid": "GOOGLE ADS ID",
        }
        expected = properties | {
            "$set": {"utm_medium": "twitter", "gclid": "GOOGLE ADS ID"},
            "$set_once": {
                "$initial_os": "Mac OS X",
                "$initial_browser": "Chrome",
                "$initial_utm_medium": "twitter",
                "$initial_current_url": "https://test.com",
                "$initial_browser_version": False,
                "$initial_gclid": "GOOGLE ADS ID",
            },
        }
        add_campaign_and_initial_properties(properties)
        assert properties == expected

    def test_rules_25_26_override_what_the_event_set(self) -> None:
        own_set, own_set_once = {"utm_medium": "mine", "other": 1}, {"$initial_browser": "mine", "kept": 2}
        properties: dict[str, Any] = {
            "utm_medium": "instagram",
            "$browser": "Firefox",
            "$browser_version": 80,
            "$referrer": "https://google.com",
            "$referring_domain": "google.com",
            "$device_type": "Desktop",
            "utm_source": "s",
            "utm_campaign": "c",
            "utm_content": "n",
            "utm_term": "t",
            "$set": own_set,
            "$set_once": own_set_once,
        }
        add_campaign_and_initial_properties(properties)
        assert properties["$set"] == {
            "utm_medium": "instagram",
            "other": 1,
            "utm_source": "s",
            "utm_campaign": "c",
            "utm_content": "n",
            "utm_term": "t",
        }
        assert properties["$set_once"] == {
            "$initial_browser": "Firefox",
            "kept": 2,
            "$initial_browser_version": 80,
            "$initial_referrer": "https://google.com",
            "$initial_referring_domain": "google.com",
            "$initial_device_type": "Desktop",
            "$initial_utm_medium": "instagram",
            "$initial_utm_source": "s",
            "$initial_utm_campaign": "c",
            "$initial_utm_content": "n",
            "$initial_utm_term": "t",
        }
        assert own_set == {"utm_medium": "mine", "other": 1}  # replaced, not changed
        assert own_set_once == {"$initial_browser": "mine", "kept": 2}

    def test_rule_26_initial_current_url_without_campaign(self) -> None:
        """The original's 'initial current domain regression test'."""
        properties: dict[str, Any] = {"distinct_id": 2, "$current_url": "https://test.com"}
        add_campaign_and_initial_properties(properties)
        assert properties == {
            "distinct_id": 2,
            "$current_url": "https://test.com",
            "$set_once": {"$initial_current_url": "https://test.com"},
        }

    def test_nothing_to_add(self) -> None:
        properties: dict[str, Any] = {"a": 1, "$set": {"b": 2}}
        add_campaign_and_initial_properties(properties)
        assert properties == {"a": 1, "$set": {"b": 2}}
