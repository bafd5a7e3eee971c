"""A plugin's network access: a request that got no response, in node-fetch's words, which plugin
authors know (and match on), naming the URL asked for (without its query, which may hold a key); and
the ConnectGuard that decides where the plugin's own connections may go."""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol

import httpx


class FetchError(Exception):
    """A request could not get a response (the name node-fetch gives this error)."""


def fetch_failed(url: str, error: httpx.HTTPError) -> FetchError:
    """The FetchError for `error`, which httpx raised while requesting `url`."""
    if isinstance(error, httpx.TimeoutException):
        return FetchError(f"network timeout at: {url}")
    return FetchError(f"request to {url} failed, reason: {error or type(error).__name__}")


class ConnectGuard(Protocol):
    """Decides where a plugin's own network connections (the `pg` module's databases, custom service
    endpoints) may go: the addresses of `host` to connect to, or a ConnectRefused. Connections are made
    to the addresses returned, not to the name again, so a second DNS answer cannot change them."""

    async def __call__(self, host: str, port: int) -> list[str]: ...


class ConnectRefused(Exception):
    """A plugin's connection that the ConnectGuard refuses (the message says why)."""


async def resolve_addresses(host: str, port: int) -> list[str]:
    """The default ConnectGuard: every address of `host`, none refused."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise ConnectRefused(f"getaddrinfo ENOTFOUND {host}: {error}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))
