"""The threads that run blocking client calls (boto3, the Snowflake connector) for plugins: a pool of
their own, of which one isolate holds at most THREADS_PER_ISOLATE at once."""

from __future__ import annotations

import asyncio
import threading
import time

from plugin_server.plugins.js.hosted import THREADS_PER_ISOLATE, BlockingCalls


async def test_one_isolate_holds_at_most_its_share_of_the_client_threads() -> None:
    running, most, lock = 0, 0, threading.Lock()
    names: set[str] = set()

    def slow_call() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            names.add(threading.current_thread().name)
        time.sleep(0.05)
        with lock:
            running -= 1

    one, other = BlockingCalls(), BlockingCalls()
    await asyncio.gather(*(one.run(slow_call) for _ in range(3 * THREADS_PER_ISOLATE)))
    assert most == THREADS_PER_ISOLATE
    most = 0
    await asyncio.gather(
        *(calls.run(slow_call) for calls in (one, other) for _ in range(THREADS_PER_ISOLATE))
    )
    assert most == 2 * THREADS_PER_ISOLATE  # isolates do not wait for each other
    assert all(name.startswith("plugin-client") for name in names)  # not the server's own threads
