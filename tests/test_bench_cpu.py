"""The benchmark's CPU time from /proc (clients/bench/cpu.py), against child processes
that burn CPU: in a thread of theirs, or in a child of theirs. Machines are noisy,
so the only bounds are: more than nothing, and at most wall time x CPUs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from clients.bench.cpu import cpu_seconds
from common.processes import wait_until

BURN = "import time\nend = time.monotonic() + 20\nwhile time.monotonic() < end: pass\n"
"""Burns one CPU for at most 20 s (the test kills it long before)."""
IN_A_THREAD = ("import threading\n"
               f"burner = threading.Thread(target=exec, args=({BURN!r},))\n"
               "burner.start()\n"
               "burner.join()\n")
"""The main thread waits for another thread, which burns."""
IN_A_CHILD = ("import subprocess, sys\n"
              f"subprocess.Popen([sys.executable, '-c', {BURN!r}]).wait()\n")
"""The process waits for a child of it, which burns."""
WINDOW = threading.Event()
"""Never set: ``_used_while`` waits on it for the window it measures."""


def _used_while(source: str, seconds: float = 0.5) -> tuple[float, float]:
    """(CPU seconds the process running ``source`` used over ``seconds``, wall seconds)."""
    proc = subprocess.Popen([sys.executable, "-c", source], start_new_session=True)
    try:
        wait_until(lambda: cpu_seconds([proc.pid]).get(proc.pid, 0) > 0.05, timeout=10,
                   what="the process to start burning")
        began, before = time.monotonic(), cpu_seconds([proc.pid])[proc.pid]
        WINDOW.wait(seconds)                     # the window measured, not a wait for anything
        after, wall = cpu_seconds([proc.pid])[proc.pid], time.monotonic() - began
        return after - before, wall
    finally:
        os.killpg(proc.pid, signal.SIGKILL)      # its own session: the child goes too
        proc.wait(5)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("source", [BURN, IN_A_THREAD, IN_A_CHILD],
                         ids=["process", "thread", "child"])
def test_cpu_seconds_grow_while_a_child_burns_cpu(source):
    used, wall = _used_while(source)
    assert 0 < used <= wall * os.cpu_count(), (used, wall)


@pytest.mark.timeout(10)
def test_a_pid_that_is_not_running_is_left_out():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(5)
    assert cpu_seconds([proc.pid, os.getpid()]).keys() == {os.getpid()}
