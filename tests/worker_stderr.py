"""Keep what a pytest-xdist worker writes to its standard error, and show it when the run fails.

A worker that dies (a segfault in V8, a V8 CHECK, the kernel) writes its last words to stderr: Python's
faulthandler stack, V8's fatal message. xdist reports only "worker crashed", and the worker's stderr lands
in the middle of a long output where CI's excerpt does not reach. So each worker's fd 2 goes to a file,
and the controller prints each non-empty file in its summary when the run failed (from the fatal
message if there is one, else its end).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

DIRECTORY_VARIABLE = "PLUGIN_SERVER_TEST_WORKER_STDERR"
SHOWN_LINES = 150


def _worker_id(config: pytest.Config) -> str | None:
    workerinput = getattr(config, "workerinput", None)
    return None if workerinput is None else str(workerinput["workerid"])


@pytest.hookimpl(tryfirst=True)  # before pytest's faulthandler plugin copies fd 2 to write its stacks to
def pytest_configure(config: pytest.Config) -> None:
    worker = _worker_id(config)
    if worker is None:
        if getattr(config.option, "numprocesses", None):  # the controller, about to start workers
            os.environ[DIRECTORY_VARIABLE] = tempfile.mkdtemp(prefix="pytest-worker-stderr-")
        return
    directory = os.environ.get(DIRECTORY_VARIABLE)
    if directory is None:
        return
    # Appended: a worker that replaces a crashed one may have its name.
    log = open(Path(directory) / f"{worker}.log", "a", buffering=1)  # noqa: SIM115 (lives as long as the process)
    log.write(f"--- worker {worker}, pid {os.getpid()}\n")
    os.dup2(log.fileno(), 2)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int) -> None:
    directory = os.environ.get(DIRECTORY_VARIABLE)
    if directory is None or _worker_id(terminalreporter.config) is not None or exitstatus == 0:
        return
    for log in sorted(Path(directory).glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        if all(line.startswith("--- worker ") for line in lines):
            continue
        # From just before the first fatal message (Python's or V8's), else the end.
        fatal = next((number for number, line in enumerate(lines) if "Fatal" in line), None)
        start = max(0, len(lines) - SHOWN_LINES) if fatal is None else max(0, fatal - 20)
        terminalreporter.section(
            f"stderr of {log.stem} (lines {start + 1}-{min(len(lines), start + SHOWN_LINES)})"
        )
        for line in lines[start : start + SHOWN_LINES]:
            terminalreporter.line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    directory = os.environ.get(DIRECTORY_VARIABLE)
    if directory is not None and _worker_id(config) is None:
        shutil.rmtree(directory, ignore_errors=True)
