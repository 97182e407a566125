"""CPU time of processes, read from ``/proc`` (Linux), for the benchmark's CPU per request."""
from __future__ import annotations

import os

TICK = os.sysconf("SC_CLK_TCK")
"""Clock ticks per second, the unit of the times in ``/proc/<pid>/stat``."""


def cpu_seconds(pids) -> dict[int, float]:
    """CPU seconds (user + system) each live process of ``pids`` has used so far,
    every thread of it and its descendants included.

    ``/proc/<pid>/stat`` gives utime and stime summed over a process's threads,
    and cutime and cstime of the children it has waited for; live children (a
    server's checkpointer) are found by their parent pid and added the same way,
    so a child that ends between two readings is neither lost nor counted twice.
    A pid that is not running is left out of the answer.
    """
    stats: dict[int, list[bytes]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    # fields after "(comm)": state, ppid, ... utime stime cutime cstime
                    stats[int(entry.name)] = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                pass                            # ended while we looked
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)

    def tree(pid: int) -> float:
        own = sum(int(ticks) for ticks in stats[pid][11:15]) / TICK
        return own + sum(tree(child) for child in children.get(pid, ()))

    return {pid: tree(pid) for pid in pids if pid in stats}
