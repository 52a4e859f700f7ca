"""`gc_tuning.py`: after start-up the collector leaves start-up's objects alone, collects
the young generation less often, and still frees garbage in reference cycles."""

from __future__ import annotations

import json
import subprocess
import sys

from gateway.gc_tuning import YOUNG_THRESHOLD

PROBE = """
import gc, json, weakref
from gateway.gc_tuning import tune_collector

before = gc.get_threshold()
tune_collector()
frozen = gc.get_freeze_count()

class Node:
    pass

freed = []
for _ in range(200):  # reference cycles only a collection can free
    node = Node()
    node.self = node
    weakref.finalize(node, freed.append, 1)
    del node
held = [[None] for _ in range(3 * 10_000)]  # live containers: young collections run
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": frozen,
                  "freed": len(freed)}))
"""


def test_startup_objects_are_frozen_and_cycles_still_freed() -> None:
    """In a fresh interpreter (the suite's own collector stays as it is): the threshold is
    raised, the older ratios kept, start-up's objects frozen, and cyclic garbage made after
    it is collected without an explicit `gc.collect()`."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    seen = json.loads(done.stdout)
    assert [YOUNG_THRESHOLD, *seen["before"][1:]] == seen["after"]
    assert seen["frozen"] > 1_000
    assert 200 == seen["freed"]
