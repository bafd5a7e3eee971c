"""V8 starts on the thread that imports the engine, so isolates work from every thread of ours.

On a CPU with memory protection keys (x86 `pku`), V8 guards its code pages with a key that only the
thread that started V8 and the threads started after it may use. A worker's first isolate used to be
the TypeScript compiler's, made in a thread: V8 started there, and the next isolate the main thread
made crashed the process (SIGSEGV). Each case runs in a fresh interpreter, where V8 has not started.
On a CPU without the keys these pass either way.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

COMPILER_FIRST = """
from plugin_server.plugins.js.transpile import get_transpiler
from plugin_server.plugins.js.engine import new_racer
get_transpiler().transpile("export const answer: number = 42", "index.ts")  # its isolate: in a thread
print(new_racer().eval("6 * 7"))  # then one on the main thread
"""

THREAD_FIRST = """
from concurrent.futures import ThreadPoolExecutor
from plugin_server.plugins.js.engine import new_racer
with ThreadPoolExecutor(1) as pool:
    in_thread = pool.submit(new_racer).result()
print(in_thread.eval("40 + 2"))
print(new_racer().eval("84 / 2"))
"""


def run_fresh(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_isolate_on_the_main_thread_after_the_compilers_in_a_thread() -> None:
    done = run_fresh(COMPILER_FIRST)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["42"]


def test_isolates_in_a_new_thread_then_on_the_main_thread() -> None:
    done = run_fresh(THREAD_FIRST)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["42", "42"]
