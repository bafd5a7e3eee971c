"""glibc's allocator settings, each in a process of its own (arenas and free pages are process-wide)."""

import subprocess
import sys

# Threads that each allocate: glibc gives every new thread an arena of its own until the limit.
ARENAS = """
import ctypes, re, sys, threading
from plugin_server.services.malloc_tuning import limit_arenas

if sys.argv[1] == "limited":
    assert limit_arenas()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
started = threading.Barrier(9)

def allocate():
    started.wait()  # all alive at once: none can inherit the arena of one that ended
    for _ in range(1000):
        libc.free(libc.malloc(4096))
    started.wait()

threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
started.wait()
libc.open_memstream.restype = ctypes.c_void_p
text, size = ctypes.c_char_p(), ctypes.c_size_t()
stream = libc.open_memstream(ctypes.byref(text), ctypes.byref(size))
libc.malloc_info(0, ctypes.c_void_p(stream))
libc.fclose(ctypes.c_void_p(stream))
started.wait()
print(len(re.findall(r"<heap nr=", ctypes.string_at(text, size.value).decode())))
"""

# Memory freed in the middle of the heap stays resident until it is given back.
GIVE_BACK = """
import ctypes
from plugin_server.services.malloc_tuning import give_back_free_memory

def resident_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(2000) for _ in range(100_000)]  # 200 MB, below the mmap threshold: in the heap
for block in blocks:
    ctypes.memset(block, 1, 2000)
for index, block in enumerate(blocks):
    if index % 100:  # every 100th kept: the heap's top cannot shrink, only its free pages go back
        libc.free(block)
before = resident_mb()
given_back = give_back_free_memory() / 2**20
print(before, resident_mb(), given_back)
"""


def _run(program: str, *arguments: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", program, *arguments], check=True, capture_output=True, text=True
    ).stdout


def test_threads_share_at_most_arena_max_arenas() -> None:
    from plugin_server.services.malloc_tuning import ARENA_MAX

    assert int(_run(ARENAS, "default")) > ARENA_MAX  # without the limit, each thread has its own
    assert int(_run(ARENAS, "limited")) <= ARENA_MAX


def test_free_memory_inside_the_heap_goes_back_to_the_system() -> None:
    before, after, given_back = map(float, _run(GIVE_BACK).split())
    assert before > 190
    assert after < before - 150, (before, after)
    assert abs(given_back - (before - after)) < 1  # what it says it gave back
