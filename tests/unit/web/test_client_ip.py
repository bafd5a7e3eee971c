"""The client IP: X-Forwarded-For counts only when the peer is a trusted proxy."""

from __future__ import annotations

import ipaddress

import pytest

from plugin_server.web.client_ip import client_ip

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        ("203.0.113.9", "1.1.1.1", "203.0.113.9"),  # untrusted peer: its header is ignored
        ("10.0.0.2", "1.1.1.1", "1.1.1.1"),
        ("10.0.0.2", "6.6.6.6, 1.1.1.1, 10.0.0.7", "1.1.1.1"),  # a spoofed hop left of the client
        ("10.0.0.2", "10.0.0.9, 10.0.0.7", "10.0.0.9"),  # all proxies: the furthest one
        ("10.0.0.2", "1.1.1.1:5123", "1.1.1.1"),
        ("::1", "[2001:db8::1]:443", "2001:db8::1"),
        ("10.0.0.2", "garbage, 1.1.1.1", "1.1.1.1"),
        ("10.0.0.2", "garbage", "10.0.0.2"),
        (None, "1.1.1.1", None),
    ],
)
def test_client_ip(peer: str | None, forwarded_for: str | None, expected: str | None) -> None:
    assert client_ip(peer, forwarded_for, TRUSTED) == expected


def test_nothing_trusted_by_default() -> None:
    assert client_ip("127.0.0.1", "1.1.1.1", ()) == "127.0.0.1"
