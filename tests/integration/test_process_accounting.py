"""harness/processes.py, on real processes: the tree under a server (children of any of its threads),
the CPU time by role, and the peak memory of the tree while a block runs (the serving benchmark's CPU
per token and mixed-workload memory, and the soak's memory bound, come from these)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.processes import PeakMemory, cpu_seconds, role, rss_mb, tree

pytestmark = pytest.mark.integration

# A parent that starts, from a thread, a child that computes for a while, then holds 300 MB for a while.
PARENT = """
import subprocess, sys, threading, time
child = []
threading.Thread(target=lambda: child.append(subprocess.Popen([sys.executable, "-c", sys.argv[1]]))).start()
time.sleep(30)
"""
CHILD = """
import time
end = time.process_time() + 0.6
while time.process_time() < end:
    pass
time.sleep(0.5)
held = bytearray(300 * 2**20)
held[:: 4096] = b"x" * len(held[:: 4096])
time.sleep(30)
"""


def wait_for(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the processes did not get there"
        time.sleep(0.05)


def test_tree_cpu_and_peak_memory_of_real_processes() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD])
    try:
        wait_for(lambda: len(tree(parent.pid)) == 2)
        child = tree(parent.pid)[1]  # started from a thread, not the main one
        assert role(child) == role(parent.pid) == Path(sys.executable).name
        with PeakMemory(parent.pid) as memory:
            wait_for(lambda: rss_mb(parent.pid) > memory.before_mb + 250)
            time.sleep(0.2)  # a sample after the rise
        assert memory.peak_mb - memory.before_mb > 250
        used = cpu_seconds(parent.pid)
        assert sum(used.values()) >= 0.6  # the child's computing, counted under its role
    finally:
        for pid in tree(parent.pid)[::-1]:
            subprocess.run(["kill", "-9", str(pid)], check=False)
        parent.wait()
    assert tree(parent.pid) == []
