from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from hypothesis import given
from hypothesis import strategies as st

from plugin_server.web.request_head import parse_query, request_head


def scope(**fields: Any) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "scheme": "http", "headers": [], **fields}


def test_reads_the_first_header_of_a_name_and_only_the_headers_capture_needs() -> None:
    head = request_head(
        scope(
            headers=[
                (b"x-forwarded-for", b"198.51.100.7"),
                (b"x-forwarded-for", b"203.0.113.9"),
                (b"content-type", b"application/json"),
                (b"cookie", b"session=secret"),
                (b"host", b"capture.example.com"),
            ],
            client=("10.0.0.1", 50000),
        )
    )
    assert head.headers == {
        "x-forwarded-for": "198.51.100.7",
        "content-type": "application/json",
        "host": "capture.example.com",
    }
    assert head.peer == "10.0.0.1"
    assert head.method == "POST"


def test_reads_the_query_with_the_last_value_of_a_name_and_blank_values_kept() -> None:
    head = request_head(scope(query_string=b"compression=gzip-js&token=a&token=b&data=&x=%C3%A9+1"))
    assert head.query == {"compression": "gzip-js", "token": "b", "data": "", "x": "é 1"}
    assert request_head(scope(query_string=b"")).query == {}


def test_the_base_url_comes_from_the_host_header_else_the_server_address() -> None:
    root = {"root_path": "/ingest/"}
    assert request_head(scope(headers=[(b"host", b"example.com:8000")], **root)).base_url == (
        "http://example.com:8000/ingest"
    )
    assert request_head(scope(server=("10.0.0.2", 80))).base_url == "http://10.0.0.2"
    assert request_head(scope(server=("10.0.0.2", 3008), scheme="https")).base_url == "https://10.0.0.2:3008"
    assert request_head(scope()).base_url == ""
    assert request_head(scope(client=None)).peer is None


# Query strings of the characters that matter to parse_qsl (separators, escapes, the space's `+`)
# and a few others, so that the simple shapes and the ones that fall back both come up often.
_QUERY_TEXT = st.text(alphabet="ab=&%+;2F é\x00", max_size=30) | st.text(max_size=30)


@given(_QUERY_TEXT)
def test_parse_query_gives_what_parse_qsl_gives(text: str) -> None:
    assert parse_query(text) == dict(parse_qsl(text, keep_blank_values=True))


@given(st.lists(st.tuples(st.text("abcz_$-.", max_size=6), st.text("abc019-._=:", max_size=8)), max_size=5))
def test_parse_query_reads_simple_queries_as_parse_qsl_does(pairs: list[tuple[str, str]]) -> None:
    text = "&".join(f"{name}={value}" for name, value in pairs)
    assert parse_query(text) == dict(parse_qsl(text, keep_blank_values=True))


def test_the_query_is_read_with_starlettes_rules() -> None:
    head = request_head(scope(query_string=b"ver=1.139.0&compression=gzip-js&ver=2&flag&&data=a%2Bb+c"))
    assert head.query == {"ver": "2", "compression": "gzip-js", "flag": "", "data": "a+b c"}
