"""Parsing shared short texts once, without letting long texts into memory."""

from plugin_server.ingestion.short_text_cache import CACHED_TEXTS, MAX_CACHED_LENGTH, cache_short_texts


def test_short_texts_are_parsed_once_and_long_ones_every_time() -> None:
    calls: list[str] = []

    @cache_short_texts
    def parse(text: str) -> int:
        calls.append(text)
        return len(text)

    short, long = "2021-11-28T10:00:00.000Z", "9" * (MAX_CACHED_LENGTH + 1)
    assert [parse(short) for _ in range(3)] == [len(short)] * 3
    assert [parse(long) for _ in range(3)] == [len(long)] * 3
    assert calls == [short, long, long, long]


def test_the_cache_holds_a_bounded_number_of_texts() -> None:
    calls: list[str] = []

    @cache_short_texts
    def parse(text: str) -> str:
        calls.append(text)
        return text

    for number in range(CACHED_TEXTS + 1):
        parse(str(number))
    parse("0")  # the oldest was dropped to make room
    assert calls.count("0") == 2


def test_values_other_than_text_are_parsed_every_time() -> None:
    calls: list[object] = []

    @cache_short_texts
    def parse(value: object) -> str:
        calls.append(value)
        return repr(value)

    values: list[object] = [None, 1_638_000_000_000, 2.5, None]
    assert [parse(value) for value in values] == ["None", "1638000000000", "2.5", "None"]
    assert calls == values
