"""The checkpointer: a child process of each server, the only user of its TinyDB
after start-up, folding finished write-ahead-log segments into it.

Why a process and not a thread: folding rebuilds TinyDB's table and rewrites
its file, CPU work that grows with the store (measured: 120-200 ms at 20k
events). In a thread it held the server's GIL meanwhile, and every write
waited. As a process scheduled SCHED_IDLE it only takes CPU time the servers
leave idle. It still costs the machine something: on this VM a fold's fresh
memory stalled every process for 20-50 ms (a SCHED_IDLE process that only
touches new pages does the same), so ``store.py`` folds when the server is
quiet, and servers holding the same events fold at different sizes. The log
segments stay on disk until folded, so a late fold costs only start-up time.

Started as ``python -m servers.checkpointer FOLDER FD FSYNC PARENT_PID`` with
one end of a socket pair as ``FD``, wrapped as a ``multiprocessing``
connection: the server sends lists of segment paths (closed files), ``None``
to stop; the child answers each fold with ``(events folded, seconds, jobs
folded)``. It dies with its server (``PR_SET_PDEATHSIG``), which is safe at
any moment: TinyDB's file is replaced atomically, and a segment is deleted
only after the file that holds its events is in place. It inherits its
server's lock on the folder (``store.py``, ``common/ownership.py``), so a new
server on the folder waits for it to be gone before it starts its own.
"""
from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path

from common import protocol as P
from servers.store import open_tinydb, read_segment

NICE = 19
"""The child's CPU priority where SCHED_IDLE is not available: the lowest."""
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (elsewhere: no-op)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def lowest_priority() -> None:
    """Linux: SCHED_IDLE, CPU time only when no other process wants it; else nice 19."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):
        pass
    try:
        os.nice(NICE)
    except OSError:
        pass


def main(folder: str, fsync: bool, conn, parent_pid: int) -> None:
    die_with_parent()
    if os.getppid() != parent_pid:          # the parent died before prctl took effect
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is for the server; it stops us
    lowest_priority()
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
        events = [P.to_builtins(e) for segment in segments for e in read_segment(segment)]
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


if __name__ == "__main__":
    import sys
    from multiprocessing.connection import Connection
    _folder, _fd, _fsync, _parent = sys.argv[1:5]
    main(_folder, _fsync == "1", Connection(int(_fd)), int(_parent))
