"""Modules of JS plugins that do I/O through the host: each is a JS facade (pg.js, aws.js, ...) over a
Python client here, reached by named operations of the host protocol (runtime.py). Each module's
state (open connections, clients) belongs to one isolate and is closed with it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

Operation = Callable[..., Awaitable[Any]]


class HostedModule(Protocol):
    """The host side of one module for one isolate."""

    def operations(self) -> dict[str, Operation]:
        """The operations it serves, by the name the JS side asks for."""
        ...

    async def close(self) -> None:
        """Close what the plugin opened (the isolate is gone)."""
        ...


class HostedError(Exception):
    """An error to reject the plugin's promise with: JavaScript's `name`, the message, and more
    properties the client library's errors have (`code`, `detail`, ...)."""

    def __init__(self, name: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.name = name
        self.fields = fields
