"""py-spy profiles of a benchmark's processes while it runs."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path


@contextlib.contextmanager
def profiled(targets: Mapping[Path, int], seconds: float, delay: float = 0.0) -> Iterator[None]:
    """py-spy samples each pid of `targets` into its path for `seconds`, starting `delay` seconds into
    the block (mid-run), and the block's end waits for the recordings. A `.svg` path gets a flame
    graph with native frames (py-spy pauses the process at each sample for those: it runs slower);
    any other path raw folded stacks, sampled without pausing (for speedscope or flamegraph.pl)."""
    if not targets:
        yield
        return
    command = py_spy()
    recorders: list[subprocess.Popen[bytes]] = []

    def record() -> None:
        for output, pid in targets.items():
            # named by their file in their folder, so that the command a flame graph shows names no path
            arguments = ["py-spy", "record", "--pid", str(pid), "--duration", str(round(seconds))]
            arguments += ["--rate", "100", "--output", output.name]
            if output.suffix == ".svg":
                arguments += ["--native", "--format", "flamegraph"]
            else:
                arguments += ["--nonblocking", "--format", "raw"]
            recorders.append(
                subprocess.Popen(
                    arguments,
                    executable=command,
                    cwd=output.parent,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )

    timer = threading.Timer(delay, record)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()
        for recorder in recorders:
            _, error = recorder.communicate(timeout=seconds + 60)
            if recorder.returncode:
                print(
                    f"py-spy failed ({recorder.returncode}): {error.decode(errors='replace')}",
                    file=sys.stderr,
                )


def py_spy() -> str:
    """The py-spy command (exits the benchmark with how to install it when there is none)."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not found:
        sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found
