"""Modules of JS plugins that do I/O through the host: each is a JS facade (pg.js, aws.js, ...) over a
Python client here, reached by named operations of the host protocol (runtime.py). Each module's
state (open connections, clients) belongs to one isolate and is closed with it."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

Operation = Callable[..., Awaitable[Any]]

# Threads for the clients that block (boto3, the Snowflake connector): a pool of their own, so that
# plugins waiting on slow services never hold the threads the server itself uses (asyncio.to_thread).
CLIENT_THREADS = 8
# How many of them one plugin's isolate may hold at once.
THREADS_PER_ISOLATE = 3
_threads = ThreadPoolExecutor(max_workers=CLIENT_THREADS, thread_name_prefix="plugin-client")


class BlockingCalls:
    """Runs one isolate's blocking client calls in the client threads, at most THREADS_PER_ISOLATE at once."""

    def __init__(self) -> None:
        self._slots = asyncio.Semaphore(THREADS_PER_ISOLATE)

    async def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(
                _threads, functools.partial(function, *args, **kwargs)
            )


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
