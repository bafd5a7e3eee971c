"""The supervisor's side of the web processes: WEB_CONCURRENCY of them on one port, kept running.

Each process binds WEB_PORT itself with SO_REUSEPORT, so the kernel spreads connections over them and
one that dies leaves the others serving while it is started again. A process that dies is started
again after a delay that doubles with each death in a row (up to 30 s), so a web that cannot start
(its port is taken by another program) does not spin.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess

from plugin_server.services.metrics import process_exited
from plugin_server.web.health import WorkerStatus
from plugin_server.web.server import web_main

log = logging.getLogger(__name__)

RESTART_MAX_DELAY_SECONDS = 30.0
# A process that ran this long before dying starts the back-off again from one second.
HEALTHY_RUN_SECONDS = 60.0


@dataclass
class _WebSlot:
    index: int
    process: SpawnProcess | None = None
    started: float = 0.0
    deaths: int = 0  # in a row
    next_start: float = 0.0


class WebProcesses:
    def __init__(self, count: int, workers: WorkerStatus) -> None:
        self._workers = workers
        self._slots = [_WebSlot(index) for index in range(count)]

    def start(self) -> None:
        for slot in self._slots:
            self._spawn(slot)

    def keep_running(self) -> None:
        """Called by the supervisor's watch loop: start again the processes that died, in time."""
        now = time.monotonic()
        for slot in self._slots:
            process = slot.process
            if process is None or process.is_alive() or now < slot.next_start:
                continue
            if slot.next_start == 0.0:  # just found dead: decide when to start it again
                slot.deaths = 1 if now - slot.started > HEALTHY_RUN_SECONDS else slot.deaths + 1
                delay = min(2.0 ** (slot.deaths - 1), RESTART_MAX_DELAY_SECONDS)
                log.error(
                    "web process exited (web-%d, code %s); starting it again in %.0fs",
                    slot.index,
                    process.exitcode,
                    delay,
                )
                slot.next_start = now + delay
                continue
            self._spawn(slot)

    def stop(self, timeout: float) -> None:
        """SIGTERM to all (uvicorn finishes the requests in flight), then wait; kill what is left."""
        running = [
            slot.process for slot in self._slots if slot.process is not None and slot.process.is_alive()
        ]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid or 0, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("web process %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join()

    def _spawn(self, slot: _WebSlot) -> None:
        if slot.process is not None and slot.process.pid is not None:
            process_exited(slot.process.pid)
        context = multiprocessing.get_context("spawn")
        slot.process = context.Process(target=web_main, args=(self._workers,), name=f"web-{slot.index}")
        slot.process.start()
        slot.started = time.monotonic()
        slot.next_start = 0.0
