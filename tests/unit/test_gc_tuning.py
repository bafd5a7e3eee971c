"""The worker's garbage collector settings, in a process of its own (freezing is process-wide)."""

import subprocess
import sys

PROGRAM = """
import gc
import plugin_server.worker  # what a worker has imported by the time it tunes
from plugin_server.services.gc_tuning import YOUNG_GENERATION_THRESHOLD, tune_garbage_collector

before = gc.get_threshold()
tune_garbage_collector()
assert gc.get_freeze_count() > 1_000, gc.get_freeze_count()
assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, *before[1:]), gc.get_threshold()

class Node:
    pass

a, b = Node(), Node()
a.other, b.other = b, a
del a, b
assert gc.collect() >= 2  # cycles made after the freeze are still collected

collected = []
gc.callbacks.append(lambda phase, info: collected.append(info["collected"]) if phase == "stop" else None)
for _ in range(YOUNG_GENERATION_THRESHOLD + 1_000):
    garbage = Node()
    garbage.itself = garbage
del garbage
assert sum(collected) >= YOUNG_GENERATION_THRESHOLD // 2, collected  # without a call: the bound holds
"""


def test_start_up_objects_are_frozen_and_cycles_still_collected_within_the_threshold() -> None:
    subprocess.run([sys.executable, "-c", PROGRAM], check=True)
