"""What a benchmark ran on, for its summary line: the cores and the Python interpreter.

The interpreter's build moves the results by about a tenth (benchmarks/README.md, "the interpreter's
build"), so a result names the interpreter its processes ran on (the server's are started with this
one's executable).
"""

from __future__ import annotations

import os
import platform
import sys


def machine() -> str:
    """`2 cores, Python 3.11.2 (/usr/bin/python3.11)`."""
    return f"{os.cpu_count()} cores, Python {platform.python_version()} ({os.path.realpath(sys.executable)})"
