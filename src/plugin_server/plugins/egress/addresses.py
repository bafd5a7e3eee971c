"""Which IP addresses plugin HTTP may connect to, and the addresses a host name spells literally.

By default only public unicast addresses: nothing on this machine (loopback, unspecified), nothing of
the private networks around it (RFC 1918, unique local IPv6, CGNAT), no link-local (where cloud
metadata services answer), no multicast, broadcast, documentation or reserved ranges. IPv6 addresses
that carry an IPv4 address (IPv4-mapped, NAT64, 6to4) are judged by the IPv4 address they carry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_PRIVATE = "a private network address"
_RESERVED = "a reserved address"
_DOCUMENTATION = "a documentation address"
_LINK_LOCAL = "a link-local address"
_METADATA = "the cloud metadata service"

# First match wins, so the more specific ranges come first (IANA special-purpose registries).
_IPV4: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(network), reason)
    for network, reason in (
        ("0.0.0.0/32", "the unspecified address"),
        ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
        ("10.0.0.0/8", _PRIVATE),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.169.254/32", _METADATA),
        ("169.254.0.0/16", _LINK_LOCAL),
        ("172.16.0.0/12", _PRIVATE),
        ("192.0.0.0/24", "an IETF protocol assignment"),
        ("192.0.2.0/24", _DOCUMENTATION),
        ("192.88.99.0/24", "a 6to4 relay anycast address"),
        ("192.168.0.0/16", _PRIVATE),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", _DOCUMENTATION),
        ("203.0.113.0/24", _DOCUMENTATION),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", _RESERVED),
    )
)
_IPV6: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(network), reason)
    for network, reason in (
        ("::/128", "the unspecified address"),
        ("::1/128", "a loopback address"),
        ("fd00:ec2::254/128", _METADATA),
        ("fc00::/7", "a private network address (unique local)"),
        ("fe80::/10", _LINK_LOCAL),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("2001::/23", "an IETF protocol assignment"),
        ("2001:db8::/32", _DOCUMENTATION),
        ("3fff::/20", _DOCUMENTATION),
    )
)
_GLOBAL_UNICAST = IPv6Network("2000::/3")  # every other IPv6 address is unassigned or special
_MAPPED = IPv6Network("::ffff:0:0/96")
_NAT64 = IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = IPv6Network("2002::/16")


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address that traffic to `address` reaches: IPv4-mapped (::ffff:a.b.c.d), NAT64
    (64:ff9b::a.b.c.d) or 6to4 (2002:aabb:ccdd::/48); None for other IPv6 addresses."""
    if address in _MAPPED or address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return IPv4Address((int(address) >> 80) & 0xFFFFFFFF)
    return None


def forbidden_reason(address: IPAddress) -> str | None:
    """Why plugin HTTP may not go to `address` by default; None for a public unicast address."""
    if isinstance(address, IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            reason = forbidden_reason(inner)
            return None if reason is None else f"{reason} ({inner}, inside {address})"
        ranges: tuple[tuple[IPv4Network | IPv6Network, str], ...] = _IPV6
    else:
        ranges = _IPV4
    for network, reason in ranges:
        if address in network:
            return reason
    if isinstance(address, IPv6Address) and address not in _GLOBAL_UNICAST:
        return _RESERVED
    return None


@dataclass(frozen=True)
class EgressPolicy:
    """Where plugin HTTP may go: public addresses, plus `allowed_networks`, or anywhere with
    `allow_private` (PLUGIN_HTTP_ALLOW_PRIVATE_NETWORKS, PLUGIN_HTTP_ALLOWED_NETWORKS)."""

    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    def refusal(self, address: IPAddress) -> str | None:
        """Why plugin HTTP may not connect to `address`, or None when it may."""
        if self.allow_private:
            return None
        candidates = [address]
        if isinstance(address, IPv6Address) and (inner := embedded_ipv4(address)) is not None:
            candidates.append(inner)
        if any(candidate in network for candidate in candidates for network in self.allowed_networks):
            return None
        return forbidden_reason(address)


_INET_ATON_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


def parse_ip(host: str) -> IPAddress | None:
    """The address `host` names literally, or None for a name to resolve.

    IPv6 in or out of brackets, and IPv4 in every spelling that inet_aton (so the system resolver)
    accepts: 1 to 4 parts, each decimal, octal (leading 0) or hex (0x), the last filling the remaining
    bytes (`2130706433`, `0x7f.1`, `0177.0.0.1` are all 127.0.0.1); a trailing dot is allowed.
    """
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in text:
        try:
            return IPv6Address(text)
        except ValueError:
            return None
    parts = text.removesuffix(".").split(".")
    if not 1 <= len(parts) <= 4 or not all(_INET_ATON_PART.fullmatch(part) for part in parts):
        return None
    *leading, last = [_inet_aton_value(part) for part in parts]
    if any(value > 0xFF for value in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    number = last
    for index, value in enumerate(leading):
        number |= value << (8 * (3 - index))
    return IPv4Address(number)


def _inet_aton_value(part: str) -> int:
    if part[:2] in ("0x", "0X"):
        return int(part[2:], 16)
    return int(part, 8 if part.startswith("0") else 10)
