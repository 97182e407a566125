"""The checkpointer: a child process of each server, the only user of its TinyDB
after start-up, folding finished write-ahead-log segments into it.

Why a process and not a thread: folding rebuilds TinyDB's table and rewrites
its file, CPU work that grows with the store (measured: 120-200 ms at 20k
events, on all three servers at once since they hold the same events). In a
thread it holds the server's GIL meanwhile, and every write waited: p99 at
half load went from 7 ms to 60 ms in the benchmark. As a process at the lowest
CPU priority it runs in the time the servers leave idle, and never blocks
them; the log segments stay on disk until folded, so a slow checkpoint costs
only start-up time.

Protocol over a ``multiprocessing`` pipe: the server sends lists of segment
paths (closed files), ``None`` to stop; the child answers each fold with
``(events folded, seconds, jobs folded)``. It dies with its server (``PR_SET_PDEATHSIG``),
which is safe at any moment: TinyDB's file is replaced atomically, and a
segment is deleted only after the file that holds its events is in place.
"""
from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path

NICE = 19
"""The child's CPU priority: the lowest, it runs when the servers do not."""
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (elsewhere: no-op)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def main(folder: str, fsync: bool, conn, parent_pid: int) -> None:
    die_with_parent()
    if os.getppid() != parent_pid:          # the parent died before prctl took effect
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is for the server; it stops us
    try:
        os.nice(NICE)
    except OSError:
        pass
    from servers.store import open_tinydb, read_segment
    db = open_tinydb(Path(folder) / "db.json", fsync)
    table = db.table("events")
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        stop, jobs = False, 1
        while conn.poll():                  # fold everything already waiting at once
            more = conn.recv()
            if more is None:
                stop = True
                break
            job += more
            jobs += 1
        started = time.monotonic()
        segments = [Path(p) for p in job]
        events = [e for segment in segments for e in read_segment(segment)]
        table.insert_multiple(events)
        db.storage.flush()
        for segment in segments:
            segment.unlink(missing_ok=True)
        try:
            conn.send((len(events), time.monotonic() - started, jobs))
        except (BrokenPipeError, OSError):
            return
        if stop:
            return
