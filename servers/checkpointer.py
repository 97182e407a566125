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
folded, error)``. ``error`` is None, or why the fold could not write (a full or
read-only disk: ``cannot write data/server-3/db.tmp: No space left on device``);
then ``db.tmp`` is removed, db.json and the segments are as they were (the
segments are still the log: nothing is lost), the child forgets what it held in
memory (it reads db.json again for the next fold), and the server sends the
same segments again later. It dies with its server (``PR_SET_PDEATHSIG``), which is safe at
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
from typing import Iterator

from tinydb.table import Document

from servers.records import doc_id, read_segment_documents
from servers.tinydb_file import AtomicJSONStorage, fsync_dir, open_tinydb

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


class Fold:
    """TinyDB as the checkpointer holds it (in memory, written out by each fold), and
    where each event's document is.

    Every event's document lives under ``records.doc_id(origin, seq)``, so a fold
    of an event already folded overwrites its document instead of adding one.
    Documents from before ids were derived are found by their ``(origin, seq)``;
    a fold that meets their event again moves it under the derived id, and copies
    of one event (the old refold bug) are dropped when the checkpointer starts."""

    def __init__(self, folder: Path, fsync: bool) -> None:
        self.folder = Path(folder)
        self.db = open_tinydb(self.folder / "db.json", fsync)
        self.table = self.db.table("events")
        self.ids: set[int] = set()        # every document's id
        seen: dict[tuple[int, int], int] = {}             # (origin, seq) -> the id kept
        copies = []
        for doc in self.table:
            self.ids.add(doc.doc_id)
            name = (doc.get("origin"), doc.get("seq"))
            if not all(isinstance(n, int) for n in name):
                continue                  # not an event: set aside by the server at load
            if name not in seen:
                seen[name] = doc.doc_id
            elif doc.doc_id == doc_id(*name):   # keep the copy under the derived id
                copies.append(seen[name])
                seen[name] = doc.doc_id
            else:
                copies.append(doc.doc_id)
        self.legacy = {name: i for name, i in seen.items() if i != doc_id(*name)}
        if copies:                        # written at once, as a fold would
            self.table.remove(doc_ids=copies)
            self.ids.difference_update(copies)
            self.db.storage.stage()
            self.db.storage.replace()
        self.folded = 0                   # events in the last fold

    def steps(self, segments: list[Path]) -> Iterator[str]:
        """Fold ``segments`` into db.json, one step at a time: yields the name of
        each step once it is done. The checkpointer runs it to the end; a kill stops
        it after any step (the tests stop it there), and every such stop leaves a
        folder that reloads to each event once and folds again to the same db.json:
        db.json is only ever replaced whole, holding events under their own ids, and
        a segment is deleted only once db.json holding its events is durable."""
        events: dict[tuple[int, int], dict] = {}          # each event's document
        for segment in segments:
            events.update(read_segment_documents(segment))
        yield "read the segments"
        if events:
            stale = [i for i in (doc_id(*k) for k in events) if i in self.ids]
            stale += [self.legacy.pop(k) for k in events if k in self.legacy]
            if stale:                     # folded before: replaced, never doubled
                self.table.remove(doc_ids=stale)
                self.ids.difference_update(stale)
            self.table.insert_multiple(Document(doc, doc_id=doc_id(*k))
                                       for k, doc in events.items())
            self.ids.update(doc_id(*k) for k in events)
            yield "updated the table in memory"
            self.db.storage.stage()
            yield "wrote db.tmp"
            self.db.storage.replace()     # and fsynced the folder
            yield "replaced db.json"
        self.folded = len(events)
        for segment in segments:
            segment.unlink(missing_ok=True)
            yield f"deleted {segment.name}"
        fsync_dir(self.folder)
        yield "synced the folder"

    def fold(self, segments: list[Path]) -> int:
        """Fold ``segments`` completely; returns how many events they held."""
        for _ in self.steps(segments):
            pass
        return self.folded


def main(folder: str, fsync: bool, conn, parent_pid: int) -> None:
    die_with_parent()
    if os.getppid() != parent_pid:          # the parent died before prctl took effect
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is for the server; it stops us
    lowest_priority()
    try:                                    # at once: it drops the old refold's copies
        target: Fold | None = Fold(Path(folder), fsync)
    except OSError:                         # a full disk: read again at the first job
        target = None
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
        folded, error = 0, None
        try:
            if target is None:
                target = Fold(Path(folder), fsync)
            folded = target.fold([Path(p) for p in job])
        except OSError as exc:              # a full or read-only disk: nothing lost
            error = f"cannot write {exc.filename or folder}: {exc.strerror or exc}"
            AtomicJSONStorage(str(Path(folder) / "db.json")).discard()   # stage's, or replace's
            target = None                   # db.json is what the disk holds: read it again
        try:
            conn.send((folded, time.monotonic() - started, jobs, error))
        except (BrokenPipeError, OSError):
            return
        if stop:
            return


if __name__ == "__main__":
    import sys
    from multiprocessing.connection import Connection
    _folder, _fd, _fsync, _parent = sys.argv[1:5]
    main(_folder, _fsync == "1", Connection(int(_fd)), int(_parent))
