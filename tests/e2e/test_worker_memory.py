"""A running worker's malloc: its arenas, read from its memory map (`/proc/<pid>/maps`), and the free
memory it gives back, from /metrics."""

from __future__ import annotations

from pathlib import Path

import httpx

from plugin_server.plugins.admin import enable_plugin, install_plugin
from plugin_server.services.malloc_tuning import ARENA_MAX, TRIM_INTERVAL_SECONDS

from .plugin_stack import Stack
from .server import wait_until
from .test_js_plugins import PLUGINS

HEAP_MAX_SIZE = 64 << 20  # glibc's reservation for each heap of a thread's arena (64-bit)


def thread_heaps(pid: int) -> list[str]:
    """The heaps of glibc's thread arenas: a reservation of HEAP_MAX_SIZE at an address aligned to it,
    its used start readable and writable, the rest inaccessible (the main arena is `[heap]`)."""
    maps = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        addresses, permissions = line.split()[:2]
        start, end = (int(address, 16) for address in addresses.split("-"))
        maps.append((start, end, permissions))
    heaps = []
    for index, (start, end, permissions) in enumerate(maps):
        if start % HEAP_MAX_SIZE or permissions != "rw-p":
            continue
        rest = maps[index + 1] if index + 1 < len(maps) else None
        if end - start == HEAP_MAX_SIZE or (
            rest is not None and rest[0] == end and rest[2] == "---p" and rest[1] - start == HEAP_MAX_SIZE
        ):
            heaps.append(f"{start:x}")
    return heaps


def given_back(web_url: str) -> float:
    """plugin_server_memory_given_back_bytes_total, as /metrics shows it."""
    text = httpx.get(f"{web_url}/metrics", timeout=5).text
    (line,) = [
        line for line in text.splitlines() if line.startswith("plugin_server_memory_given_back_bytes_total")
    ]
    return float(line.split()[1])


def test_a_worker_keeps_to_few_malloc_arenas_and_gives_free_memory_back(stack: Stack) -> None:
    """A worker with a JavaScript plugin (V8 starts threads of its own) under a little load."""
    hello = install_plugin(stack.db, PLUGINS / "hello-js")
    enable_plugin(stack.db, hello, stack.team.team_id, {"greeting": "hej"})
    with stack.server(WORKER_CONCURRENCY="1") as server:
        for index in range(200):
            stack.send("$pageview", distinct_id=f"user-{index % 20}")
        assert stack.wait_for_events(200) == 200
        (worker,) = server.worker_pids()
        assert len(thread_heaps(worker)) <= ARENA_MAX - 1, thread_heaps(worker)  # and the main arena
        wait_until(lambda: given_back(server.web_url) > 0, timeout=TRIM_INTERVAL_SECONDS + 15)
