"""A plugin's HTTP request that got no response, in node-fetch's words, which plugin authors know
(and match on): the error names the URL asked for (without its query, which may hold a key)."""

from __future__ import annotations

import httpx


class FetchError(Exception):
    """A request could not get a response (the name node-fetch gives this error)."""


def fetch_failed(url: str, error: httpx.HTTPError) -> FetchError:
    """The FetchError for `error`, which httpx raised while requesting `url`."""
    if isinstance(error, httpx.TimeoutException):
        return FetchError(f"network timeout at: {url}")
    return FetchError(f"request to {url} failed, reason: {error or type(error).__name__}")
