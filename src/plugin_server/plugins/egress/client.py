"""The HTTP client of plugins: httpx over a network backend that connects only where the policy allows.

The check sits where connections are made (httpcore's network backend), so it holds for every request
and every redirect httpx follows: the host is resolved once, every address it resolves to is checked,
and the connection goes to a checked address (no second lookup that DNS rebinding could answer
differently). TLS still verifies the certificate against the host name (httpcore passes the URL's host
as server_hostname), and pooled connections are only reused for the origin they were checked for.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import typing
from collections.abc import Awaitable, Callable, Iterable
from ipaddress import ip_address

import httpcore
import httpx

from plugin_server.plugins.egress.addresses import EgressPolicy, IPAddress, parse_ip

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

ALLOW_HINT = "PLUGIN_HTTP_ALLOWED_NETWORKS or PLUGIN_HTTP_ALLOW_PRIVATE_NETWORKS allow it"


class ForbiddenDestination(httpx.ConnectError):
    """Plugin HTTP was refused before connecting: the host is, or resolves to, an address that the
    policy does not allow (JavaScript's fetch rejects with this message)."""


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The addresses of `host` from the system resolver (getaddrinfo, in a thread)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ip_address(info[4][0]) for info in infos]


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves, checks, then connects to a checked address.

    `trusted` origins, (host, port) as the URL names them, are resolved the same way but not checked:
    the operator configured them (the PostHog host of posthog.api).
    """

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        resolver: Resolver = system_resolver,
        trusted: Iterable[tuple[str, int]] = (),
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._trusted = frozenset((host.lower(), port) for host, port in trusted)
        self._inner = inner or httpcore.AnyIOBackend()

    async def checked_addresses(self, host: str, port: int) -> list[IPAddress]:
        """The addresses of `host`, each allowed; ForbiddenDestination when any one is not."""
        literal = parse_ip(host)
        try:
            addresses = [literal] if literal is not None else await self._resolver(host, port)
        except OSError as error:
            raise httpcore.ConnectError(f"{host} could not be resolved: {error}") from None
        unique = list(dict.fromkeys(addresses))
        if (host.lower(), port) in self._trusted:
            return unique
        for address in unique:
            reason = self._policy.refusal(address)
            if reason is not None:
                named = host if host == str(address) else f"{host} ({address})"
                raise ForbiddenDestination(
                    f"plugin HTTP may not connect to {named}: it is {reason}; {ALLOW_HINT}"
                )
        return unique

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                addresses = await self.checked_addresses(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        if not addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        # One address after the other, each with its share of the time left, so that an address that
        # swallows packets (IPv6 without a route, say) leaves time for the next one.
        for index, address in enumerate(addresses):
            left = None if deadline is None else max(deadline - loop.time(), 0.0) / (len(addresses) - index)
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=left,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout):
                if index == len(addresses) - 1:
                    raise
        raise AssertionError("unreachable")  # the loop returns or raises

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (HTTP/1.1, pooling, TLS) over a GuardedBackend. httpx does not take a
    network backend as an argument, so the connection pool it built is replaced by one that uses it."""

    def __init__(self, backend: GuardedBackend, *, verify: ssl.SSLContext | bool = True) -> None:
        ssl_context = httpx.create_ssl_context(verify=verify)  # SSL_CERT_FILE / SSL_CERT_DIR apply
        super().__init__(verify=ssl_context)
        limits = httpx.Limits()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


def guarded_client(
    backend: GuardedBackend, *, timeout: float, verify: ssl.SSLContext | bool = True
) -> httpx.AsyncClient:
    """An httpx client for plugins: redirects followed (each checked), no proxies from the environment."""
    return httpx.AsyncClient(
        transport=GuardedTransport(backend, verify=verify),
        timeout=timeout,
        follow_redirects=True,
        trust_env=False,
    )
