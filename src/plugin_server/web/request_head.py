"""What capture reads of a request before its body, straight from the ASGI scope.

Starlette's Request builds a URL, a header multi-dict and a query multi-dict for each request; on the
capture path, which answers thousands of requests a second on one core, only a few headers, the query
and the base URL are needed, so they are read here in one pass, with Starlette's rules (first header
of a name, last query parameter of a name, the base URL from the Host header else the server address).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

# The headers capture reads; the others are not decoded.
HEADERS = frozenset(
    (b"content-type", b"content-encoding", b"content-length", b"origin", b"x-forwarded-for", b"host")
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    query: dict[str, str]
    headers: dict[str, str]  # the names of HEADERS only; the first value of a name
    peer: str | None  # the connection's remote address
    base_url: str  # scheme://host[:port][root_path], no trailing slash


def request_head(scope: MutableMapping[str, Any]) -> RequestHead:
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in HEADERS:
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    raw_query: bytes = scope.get("query_string", b"")
    query = parse_query(raw_query.decode("latin-1")) if raw_query else {}
    client = scope.get("client")
    return RequestHead(
        method=scope["method"],
        query=query,
        headers=headers,
        peer=client[0] if client else None,
        base_url=_base_url(scope, headers.get("host")),
    )


def parse_query(text: str) -> dict[str, str]:
    """`dict(parse_qsl(text, keep_blank_values=True))`: the last value of each name.

    Without `%` or `+` nothing is unquoted, and splitting on `&` then on the first `=` gives what
    parse_qsl gives (empty pairs skipped, a name without `=` has the empty value) at a fifth of its
    cost: posthog-js's `?ver=1.139.0&compression=gzip-js&_=...` is such a query. Anything else is
    parse_qsl's."""
    if "%" in text or "+" in text:
        return dict(parse_qsl(text, keep_blank_values=True))
    query = {}
    for pair in text.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            query[name] = value
    return query


def _base_url(scope: MutableMapping[str, Any], host: str | None) -> str:
    scheme: str = scope.get("scheme", "http")
    root_path: str = scope.get("app_root_path", scope.get("root_path", "")).rstrip("/")
    if host is None:
        server = scope.get("server")
        if server is None:
            return root_path
        name, port = server
        host = name if _DEFAULT_PORTS.get(scheme) == port else f"{name}:{port}"
    return f"{scheme}://{host}{root_path}"
