"""The client's IP address: the connection's peer, or what trusted proxies say in X-Forwarded-For."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_ip(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str | None:
    """Walk X-Forwarded-For from the right while the address that added the hop is a trusted proxy.

    A header from an untrusted peer is ignored (anyone can write one); the first address not in
    `trusted` is the client. An unreadable hop stops the walk at the proxy that passed it on.
    """
    if peer is None:
        return None
    address = _strip_port(peer)
    if not forwarded_for:
        return address
    for hop in reversed(forwarded_for.split(",")):
        if not _is_trusted(address, trusted):
            return address
        candidate = _strip_port(hop.strip())
        if _parse(candidate) is None:
            return address
        address = candidate
    return address


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    parsed = _parse(address)
    return parsed is not None and any(parsed in network for network in trusted)


def _parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


def _strip_port(address: str) -> str:
    """`1.2.3.4:5678` -> `1.2.3.4` and `[::1]:80` -> `::1` (some proxies add the port)."""
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    if address.count(":") == 1:
        return address.split(":", 1)[0]
    return address
