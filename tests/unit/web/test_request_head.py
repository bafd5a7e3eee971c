from __future__ import annotations

from typing import Any

from plugin_server.web.request_head import request_head


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
