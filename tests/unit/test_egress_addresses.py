"""The address check of plugin HTTP on generated addresses and spellings (no network).

The oracles are independent of the checker's own table: the ranges the policy promises (written out
below), Python's `ipaddress` view of which IPv4 addresses are globally reachable, and the C library's
inet_aton for what an IPv4 spelling means.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from plugin_server.config import SettingsError, load_settings
from plugin_server.plugins.egress import egress_policy
from plugin_server.plugins.egress.addresses import EgressPolicy, IPAddress, embedded_ipv4, parse_ip

DEFAULT = EgressPolicy()

# What must never be reached by default.
FORBIDDEN_V4 = [
    IPv4Network(cidr)
    for cidr in (
        "0.0.0.0/8",  # unspecified, 'this network'
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",  # RFC 1918
        "100.64.0.0/10",  # CGNAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata at 169.254.169.254
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
    )
]
FORBIDDEN_V6 = [
    IPv6Network(cidr)
    for cidr in ("::/128", "::1/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "64:ff9b:1::/48")
]
# Where globally routable IPv6 unicast lives, minus the special blocks inside it.
GLOBAL_V6 = IPv6Network("2000::/3")
SPECIAL_V6 = [IPv6Network(cidr) for cidr in ("2001::/23", "2001:db8::/32", "2002::/16", "3fff::/20")]
# Blocks Python calls global that the policy refuses whole: IETF protocol assignments (192.0.0.9 and
# .10 are anycast services no plugin needs) and the deprecated 6to4 relay anycast.
REFUSED_ALTHOUGH_GLOBAL = [IPv4Network("192.0.0.0/24"), IPv4Network("192.88.99.0/24")]


def public_by_ipaddress(address: IPv4Address) -> bool:
    if any(address in network for network in REFUSED_ALTHOUGH_GLOBAL):
        return False
    return address.is_global and not address.is_multicast


ipv4_numbers = st.integers(0, 2**32 - 1)


@st.composite
def in_network(draw: st.DrawFn, networks: list[IPv4Network] | list[IPv6Network]) -> IPAddress:
    network = draw(st.sampled_from(networks))
    offset = draw(st.integers(0, network.num_addresses - 1))
    return network[offset]


def _part(value: int, radix: str) -> str:
    return {"dec": str(value), "oct": f"0{value:o}", "hex": f"0x{value:x}", "HEX": f"0X{value:X}"}[radix]


@st.composite
def ipv4_spelling(draw: st.DrawFn, address: IPv4Address) -> str:
    """`address` as inet_aton reads it: 1 to 4 parts (the last filling the rest), each part in decimal,
    octal or hex."""
    number = int(address)
    count = draw(st.integers(1, 4))
    leading = [(number >> (8 * (3 - index))) & 0xFF for index in range(count - 1)]
    last = number & ((1 << (8 * (5 - count))) - 1)
    radixes = st.sampled_from(["dec", "oct", "hex", "HEX"])
    return ".".join(_part(value, draw(radixes)) for value in [*leading, last])


@st.composite
def ipv6_carrying(draw: st.DrawFn, address: IPv4Address) -> str:
    """An IPv6 address whose traffic reaches `address`: IPv4-mapped, NAT64 or 6to4, in any notation."""
    number = int(address)
    kind = draw(st.sampled_from(["mapped", "nat64", "6to4"]))
    if kind == "6to4":
        carrier = IPv6Address((0x2002 << 112) | (number << 80) | draw(st.integers(0, 2**80 - 1)))
    else:
        carrier = IPv6Address((0xFFFF << 32 | number) if kind == "mapped" else (0x64FF9B << 96 | number))
    text = draw(st.sampled_from([str(carrier), carrier.exploded, carrier.exploded.upper()]))
    if kind == "mapped" and draw(st.booleans()):
        text = f"::ffff:{address}"
    return f"[{text}]" if draw(st.booleans()) else text


def refused(spelling: str) -> bool:
    address = parse_ip(spelling)
    assert address is not None, spelling
    return DEFAULT.refusal(address) is not None


@given(st.data(), in_network(FORBIDDEN_V4))
def test_every_spelling_of_a_forbidden_ipv4_address_is_refused(
    data: st.DataObject, address: IPv4Address
) -> None:
    spelling = data.draw(st.one_of(ipv4_spelling(address), ipv6_carrying(address)))
    assert refused(spelling)


@given(st.data(), ipv4_numbers)
def test_any_ipv4_address_is_refused_exactly_when_it_is_not_public(data: st.DataObject, number: int) -> None:
    address = IPv4Address(number)
    spelling = data.draw(st.one_of(ipv4_spelling(address), ipv6_carrying(address)))
    assert refused(spelling) is not public_by_ipaddress(address)


@given(in_network(FORBIDDEN_V6))
def test_forbidden_ipv6_ranges_are_refused(address: IPv6Address) -> None:
    assert DEFAULT.refusal(address) is not None


@given(st.integers(0, 2**128 - 1))
def test_ipv6_outside_global_unicast_is_refused_unless_it_carries_a_public_ipv4(number: int) -> None:
    address = IPv6Address(number)
    assume(address not in GLOBAL_V6)
    inner = embedded_ipv4(address)
    assert (DEFAULT.refusal(address) is None) is (inner is not None and public_by_ipaddress(inner))


@given(st.integers(0, 2**125 - 1))
def test_global_unicast_ipv6_is_allowed(offset: int) -> None:
    address = GLOBAL_V6[offset]
    assume(not any(address in network for network in SPECIAL_V6))
    assert DEFAULT.refusal(address) is None


@given(st.text(alphabet="0123456789abcdefxX.", min_size=1, max_size=24))
def test_ipv4_literals_are_read_as_the_c_library_reads_them(text: str) -> None:
    """No text names an address to inet_aton (so to getaddrinfo) that parse_ip reads otherwise or not
    at all. parse_ip also takes one trailing dot, as URL hosts may have one."""
    try:
        expected: IPv4Address | None = IPv4Address(socket.inet_aton(text))
    except OSError:
        expected = None
    parsed = parse_ip(text)
    if expected is None and parsed is not None:
        assert text.endswith(".") and parse_ip(text[:-1]) == parsed
    else:
        assert parsed == expected


@given(st.data(), ipv4_numbers)
def test_generated_ipv4_spellings_mean_the_address(data: st.DataObject, number: int) -> None:
    spelling = data.draw(ipv4_spelling(IPv4Address(number)))
    assert parse_ip(spelling) == IPv4Address(socket.inet_aton(spelling)) == IPv4Address(number)


@given(st.data(), in_network(FORBIDDEN_V4))
def test_allowed_networks_open_their_addresses_in_every_form(
    data: st.DataObject, address: IPv4Address
) -> None:
    prefix = data.draw(st.integers(8, 32))
    policy = EgressPolicy(allowed_networks=(ip_network(f"{address}/{prefix}", strict=False),))
    spelling = data.draw(st.one_of(ipv4_spelling(address), ipv6_carrying(address)))
    parsed = parse_ip(spelling)
    assert parsed is not None and policy.refusal(parsed) is None
    outside = IPv4Address(int(policy.allowed_networks[0].broadcast_address) + 1 & 0xFFFFFFFF)
    assert policy.refusal(outside) == DEFAULT.refusal(outside)


@given(st.one_of(ipv4_numbers.map(IPv4Address), st.integers(0, 2**128 - 1).map(IPv6Address)))
def test_allow_private_allows_every_address(address: IPAddress) -> None:
    assert EgressPolicy(allow_private=True).refusal(address) is None


def test_reasons_name_what_the_address_is() -> None:
    def reason(text: str) -> str | None:
        address = parse_ip(text)
        assert address is not None
        return DEFAULT.refusal(address)

    assert reason("169.254.169.254") == "the cloud metadata service"
    assert reason("fd00:ec2::254") == "the cloud metadata service"
    assert reason("0x7f000001") == "a loopback address"
    assert reason("[::1]") == "a loopback address"
    assert reason("fe80::1%2") == "a link-local address"
    assert reason("100.64.0.1") == "shared address space (CGNAT)"
    assert reason("::ffff:10.0.0.1") == "a private network address (10.0.0.1, inside ::ffff:a00:1)"
    assert reason("2002:c0a8:0101::1") == "a private network address (192.168.1.1, inside 2002:c0a8:101::1)"
    assert reason("8.8.8.8") is None and reason("2606:4700:4700::1111") is None
    assert parse_ip("example.com") is None and parse_ip("1.2.3.4.5") is None and parse_ip("[::1") is None


def test_the_settings_make_the_policy() -> None:
    assert egress_policy(load_settings({})) == EgressPolicy()
    settings = load_settings(
        {
            "PLUGIN_HTTP_ALLOW_PRIVATE_NETWORKS": "yes",
            "PLUGIN_HTTP_ALLOWED_NETWORKS": " 10.20.0.0/16, fd00:1::5 ",
        }
    )
    assert egress_policy(settings) == EgressPolicy(
        allow_private=True, allowed_networks=(ip_network("10.20.0.0/16"), ip_network("fd00:1::5/128"))
    )
    with pytest.raises(SettingsError, match=r"'intranet' is not an IP address or CIDR network"):
        load_settings({"PLUGIN_HTTP_ALLOWED_NETWORKS": "10.0.0.0/8,intranet"})
