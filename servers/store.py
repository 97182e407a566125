"""Durable storage of one server: a write-ahead log folded into TinyDB.

Why not TinyDB alone: its default storage re-reads and rewrites the whole file
on every insert, so a write costs more the more is stored (measured: 188 acked
posts/s at 1,000 posts). Here a write costs one appended line, flushed before
the ack; a checkpointer process (``checkpointer.py``), the only user of TinyDB
after start-up, folds whole log segments into TinyDB in one ``insert_multiple``
and writes the file atomically. Checkpoints come after ``max(checkpoint_min, ratio * stored)`` new
events, so their total cost stays proportional to the number of writes.

A fold is idempotent: documents are keyed by ``(origin, seq)`` (``records.doc_id``),
so a fold killed after it replaced db.json and before it deleted the segment is
redone at the next start without a second copy of anything; the folder is
fsynced after each rename and delete (``checkpointer.Fold.steps``).

On disk, under ``data/server-<id>/``::

    db.json              TinyDB (table "events", one document per event, + "sum"),
                         replaced atomically
    wal-000007.jsonl     log segments not yet folded, one JSON event per line (+ "sum")
    rejected.jsonl       stored records that failed validation at load (never applied)
    db.json.corrupt-1    a db.json that was not a TinyDB file, moved aside at load
    DAMAGED              while the folder is known to have lost events that no peer has
                         given back yet: why, in one line
    LOCK                 flock'ed by the server owning the folder (and its checkpointer)
    db.tmp               the next db.json while a fold writes it (removed if it fails)
    .write-probe         written and deleted by a halted server learning if it can write

One owner per folder: the store locks ``LOCK`` before it touches anything else
(``common/ownership.py``); a second process on the folder gets ``InUse`` and
writes nothing.

What survives what: an acknowledged event is in the OS page cache (written)
or on disk (``fsync=True``) before the ack, so it survives a kill of the process
(SIGKILL) either way, and a power loss only with fsync. A torn last line (a
kill in the middle of a write) is ignored on reload: it was never acked.

A full or read-only disk: the log's unwritten lines wait in the store's own
buffer, written by ``sync()`` with ``os.write`` (one call per loop turn, as a
buffered file did), and the store remembers the segment's length after the last
write that went through. Any ``OSError`` on the write path (ENOSPC, EROFS,
EDQUOT, EIO...) truncates the segment back to that length, so no half-written
line stays, drops the buffer, and is kept in ``failed`` and raised as
``DiskError``; every later ``append`` or ``sync`` raises it again at once. So
nothing is ever reported durable that is not in the file, and the file holds
what the syncs that succeeded wrote. (A disk read-only even to the truncation
may keep part of the failed write, never acknowledged: a torn last line is
skipped at reload; a whole one loads like any event and reaches the peers by
catch-up, and a retry of its request elsewhere is applied once, as any retry
is.) The server halts on it
(``disk_watch.py``). A fold that cannot write ``db.tmp`` removes it and is
retried later (``checkpointer.py``); a stale ``db.tmp`` left by a fold cut short
is removed at the next start.

Every event read back, from TinyDB or a log segment, is validated as one from
the network is (``protocol.Event``) and checked against the checksum its record
carries (``records.py``); one that fails either is set aside, named in
``rejected`` (file, record, reason) for the server to log, and never applied.
Records written before checksums load as unverified, counted in ``unverified``.

A damaged ``db.json`` loses what it held, and the server cannot name what that was:
one that is not valid JSON, or not shaped as TinyDB writes it, is moved aside (to
``db.json.corrupt-N``, never over an earlier one); one that is missing while the log
segments show that a fold happened (the lowest segment number is above 1: an empty
last segment is written to again at the next start, never folded, so only a fold of
events moves the numbers on) is reported as deleted. Either way the store writes
``DAMAGED`` first, then an empty valid ``db.json``, and says so in ``needs_repair``:
the server syncs from a serving peer before it serves (``membership.py``) and then
calls ``repaired()``, which removes the marker. A kill in between leaves the marker,
so the next start syncs first too.

Where: this module holds the ``EventStore`` (the log's write path, start-up, a damaged
folder's marker, the checkpointer child's jobs); ``DiskError`` and the probe of a
full folder are ``servers/disk_error.py``; db.json's storage (``AtomicJSONStorage``,
``open_tinydb``, ``fsync_dir``) is ``servers/tinydb_file.py``; reading a folder back
(``read_folder``, db.json's shape, the segments' numbers) is ``servers/folder.py``.
Their names are importable from here too.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter, deque
from multiprocessing.connection import Connection
from pathlib import Path

from common import protocol as P
from common.ownership import LOCK_FILE, claim, release
from servers.disk_error import PROBE_FILE, DiskError, probe_folder  # noqa: F401 - here too
from servers.folder import DamagedFile, read_folder, segment_number  # noqa: F401
from servers.records import wal_line
from servers.tinydb_file import AtomicJSONStorage, fsync_dir, open_tinydb  # noqa: F401

OVERDUE = 4
"""...unless the log holds this many times what was due: under endless load."""
ROOT = Path(__file__).resolve().parent.parent


REJECTED = "rejected.jsonl"
"""Stored records that failed validation at load, kept for the operator."""
DAMAGED = "DAMAGED"
"""Present while the folder is known to have lost events no peer has given back yet."""
CORRUPT = "db.json.corrupt-"
"""A damaged db.json is moved to this name with the first number not yet taken."""
TAG_CHARS = 40
"""What the damage was, as ``status`` shows it (``waiting``), is cut to this length."""


class EventStore:
    """Append events, make them durable, reload them; one instance per server."""

    def __init__(self, folder: Path, fsync: bool = False, checkpoint_min: int = 5000,
                 checkpoint_ratio: float = 0.5, stagger: float = 1.0,
                 quiet_s: float = 0.25, close_wait: float = 2.0,
                 retry_s: float = 60.0) -> None:
        self.folder = Path(folder)
        # before anything else: a second process on this folder must change nothing
        self._lock = claim(self.folder / LOCK_FILE, name=self.folder, record_pid=True,
                           need="a server needs its data folder writable")
        self.fsync = fsync
        self.checkpoint_min = checkpoint_min
        self.checkpoint_ratio = checkpoint_ratio
        self.stagger = stagger            # servers holding the same events fold apart
        self.quiet_s = quiet_s            # a due fold waits this long without writes
        self.close_wait = close_wait      # a stopping server waits this long for a fold
        self.retry_s = retry_s            # a fold that failed is tried again this much later
        self.rejected: list[str] = []     # stored records set aside at load: file, record, why
        self.problems: list[str] = []     # what was wrong with the folder at load, a line each
        self.needs_repair: str | None = None   # what was damaged, until a peer gave it back
        self.unverified: Counter = Counter()   # records loaded without a checksum, by file
        self.stale_tmp = False            # load removed a db.tmp left by a fold cut short
        self.stored = 0                   # events in TinyDB or handed to the checkpointer
        self._segment_no = 0
        self._fd: int | None = None       # the current segment, unbuffered, append-only
        self._wal_path: Path | None = None
        self._good = 0                    # its length after the last write that went through
        self._buffer = bytearray()        # appended lines not yet written
        self._unfolded: list[P.Event] = []   # events in the current segment...
        self._synced = 0                  # ...how many of them are written
        self.failed: DiskError | None = None  # the write that failed: nothing is written after
        self._checkpointer: subprocess.Popen | None = None
        self._pipe = None
        self._jobs: deque[list[Path]] = deque()  # segments sent to fold, not yet answered
        self._refold: list[Path] = []     # segments whose fold failed, to fold again...
        self._refold_at = 0.0             # ...from then on (monotonic)
        self.lost: str | None = None      # why checkpoints stopped, for the server to log
        self.fold_failed: str | None = None   # why the last fold failed, for the server to log

    # --- start-up -------------------------------------------------------------
    def load(self) -> list[P.Event]:
        """Every valid event on disk, each once (``read_folder``); then the log
        segments go to the checkpointer, and a new segment is opened (the last one
        again if nothing was ever written to it). A folder that cannot take the new
        segment leaves ``failed`` set (the events still load)."""
        self._read_marker()
        held, segments = read_folder(self.folder, self._set_aside, self.unverified,
                                     self._damaged)
        if segments and segments[-1].stat().st_size == 0:
            # never written: folded, it would move the numbers on with no event in
            # db.json, and a later start would take db.json for deleted
            self._segment_no = segment_number(segments.pop()) - 1
        else:
            self._segment_no = segment_number(segments[-1]) if segments else 0
        # no checkpointer can be writing it: it shares our lock, and none runs yet
        self.stale_tmp = AtomicJSONStorage(str(self.folder / "db.json")).discard()
        self._start_checkpointer()
        if segments:            # fold them right away, so the new segment starts empty
            self._send_job(segments)
        self.stored = len(held)
        try:
            self._open_segment()
        except DiskError:
            pass                # in self.failed, for the server
        return list(held.values())

    # --- a damaged folder ------------------------------------------------------
    @property
    def marker(self) -> Path:
        return self.folder / DAMAGED

    def _read_marker(self) -> None:
        """A marker left by an earlier start: that damage is not repaired yet."""
        try:
            text = self.marker.read_text(errors="replace")
        except FileNotFoundError:
            return
        first = text.splitlines()[0] if text.strip() else ""
        tag = "".join(c for c in first if c.isprintable())[:TAG_CHARS].strip() or "unknown"
        self.needs_repair = tag
        self.problems.append(f"{self.folder} was damaged at an earlier start ({tag}) and no "
                             f"peer has given back what it lost yet: {self._repair_plan()}")

    def _damaged(self, path: Path, problem: str) -> None:
        """``read_folder`` found db.json damaged or missing: the marker first (durable),
        then the file moved aside, then an empty db.json in its place, so that the
        damage is known at every later start until a peer repairs it, and only then."""
        moved = ""
        tag = path.name if path.exists() else f"{path.name} missing"
        self._write_marker(f"{tag}\n{path} {problem}\n")
        if path.exists():
            target = self._corrupt_name()
            os.rename(path, target)
            moved = f": moved to {target}"
        empty = AtomicJSONStorage(str(path))
        empty.write({})
        empty.stage()
        empty.replace()                   # and fsynced the folder
        self.needs_repair = tag
        self.problems.append(f"{path} {problem}{moved}{'; ' if moved else ': '}"
                             f"{self._repair_plan()}")

    def _repair_plan(self) -> str:
        return (f"what it held is pulled again from a peer before serving (if no peer "
                f"will ever hold it, delete {self.marker} to serve what is left)")

    def _corrupt_name(self) -> Path:
        n = 1
        while (self.folder / f"{CORRUPT}{n}").exists():
            n += 1
        return self.folder / f"{CORRUPT}{n}"

    def _write_marker(self, text: str) -> None:
        with open(self.marker, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.folder)

    def repaired(self) -> None:
        """A peer gave back what the folder lost: forget the damage."""
        self.marker.unlink(missing_ok=True)
        fsync_dir(self.folder)
        self.needs_repair = None

    def _set_aside(self, where: str, raw: bytes) -> None:
        """Keep an invalid stored record in ``rejected.jsonl`` for the operator (it is
        never applied, and a fold leaves it out), and name it for the server's log
        (with why it could not be kept, on a full disk)."""
        record = {"record": where, "raw": raw.decode("utf-8", "replace")}
        try:
            with open(self.folder / REJECTED, "ab") as f:
                f.write(P.dumps(record) + b"\n")
        except OSError as exc:
            where = f"{where} (not kept in {REJECTED}: {exc.strerror or exc})"
        self.rejected.append(where)

    def _start_checkpointer(self) -> None:
        ours, theirs = socket.socketpair()
        self._pipe = Connection(ours.detach())
        child_fd = theirs.detach()
        try:
            self._checkpointer = subprocess.Popen(
                [sys.executable, "-m", "servers.checkpointer", str(self.folder), str(child_fd),
                 "1" if self.fsync else "0", str(os.getpid())],
                pass_fds=[child_fd, self._lock], cwd=ROOT)   # it holds the folder too
        finally:
            os.close(child_fd)

    def _open_segment(self) -> None:
        self._segment_no += 1
        path = self._wal_path = self.folder / f"wal-{self._segment_no:06d}.jsonl"
        self._unfolded = []
        self._synced = 0
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                               0o644)
            self._good = os.fstat(self._fd).st_size
            if self.fsync:                # its name must survive a power loss too
                fsync_dir(self.folder)
        except OSError as exc:
            raise self._fail(path, exc) from None

    # --- the write path -----------------------------------------------------------
    def append(self, event: P.Event, raw: bytes | None = None) -> None:
        """Queue ``event`` for the log (in memory: ``sync`` writes it); ``raw``: the
        event as ``P.dumps`` gives it, if the caller has it already."""
        if self.failed is not None:
            raise self.failed
        self._buffer += wal_line(event, raw)
        self._unfolded.append(event)

    def sync(self) -> None:
        """Make every appended event durable; call before acknowledging them.
        Raises ``DiskError`` if they cannot be: then none of them is in the log."""
        if self.failed is not None:
            raise self.failed
        pending = self._buffer
        if not pending:
            return
        try:
            written = os.write(self._fd, pending)
            if written < len(pending):            # a short write: the rest, or its error
                with memoryview(pending) as rest:
                    while written < len(rest):
                        written += os.write(self._fd, rest[written:])
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            raise self._fail(self._wal_path, exc) from None
        self._good += len(pending)
        pending.clear()
        self._synced = len(self._unfolded)

    def _fail(self, path: Path, exc: OSError) -> DiskError:
        """A write that did not go through: the segment cut back to its last good
        length (no half line stays), the unwritten lines dropped, and nothing
        written from now on."""
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, self._good)
            except OSError:
                pass              # read-only: a torn last line, skipped at reload
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        del self._unfolded[self._synced:]
        self.failed = DiskError(path, exc, needed=len(self._buffer))
        self._buffer = bytearray()
        return self.failed

    def maybe_checkpoint(self, quiet_for: float = float("inf"), idle_s: float = 5.0) -> bool:
        """Rotate the log and hand the full segment to the checkpointer when due
        and the server has been without writes for ``QUIET_S`` (or it is
        ``OVERDUE`` times due); anything unfolded goes after ``idle_s`` quiet.
        Segments whose fold failed go again ``retry_s`` after, in a quiet moment or
        with the next rotation. Raises ``DiskError`` if the new segment cannot be made."""
        again = self._refold if self._refold and time.monotonic() >= self._refold_at else []
        due = int(max(self.checkpoint_min, self.checkpoint_ratio * self.stored) * self.stagger)
        n = len(self._unfolded)
        if not n or not (n >= OVERDUE * due or (n >= due and quiet_for >= self.quiet_s)
                         or quiet_for >= idle_s):
            if again and quiet_for >= self.quiet_s:
                self._refold = []
                self._send_job(again)
            return False
        self.sync()
        os.close(self._fd)
        self._fd = None
        if again:
            self._refold = []
        self._send_job(again + [self._wal_path])
        self.stored += len(self._unfolded)
        self._open_segment()
        return True

    def finished(self) -> list[tuple[int, float]]:
        """Checkpoints done since the last call: (events folded, seconds). A fold
        that failed is in ``fold_failed`` instead, its segments kept to fold again."""
        done = []
        try:
            while self._jobs and self._pipe is not None and self._pipe.poll():   # a select
                folded, seconds, jobs, error = self._pipe.recv()
                segments = [path for _ in range(min(jobs, len(self._jobs)))
                            for path in self._jobs.popleft()]
                if error is None:
                    done.append((folded, seconds))
                    continue
                self._refold += [p for p in segments if p not in self._refold]
                self._refold_at = time.monotonic() + self.retry_s
                self.fold_failed = error
        except (EOFError, OSError, ValueError, TypeError):
            self._checkpointer_gone()
        return done

    def _checkpointer_gone(self) -> None:
        """Killed, or failed: the segments it did not fold wait for the next start."""
        if self._pipe is not None:
            self._jobs.clear()
            self._refold = []
            self._pipe.close()
            self._pipe = None
            self.lost = "the checkpointer is gone: log segments are folded at the next start"

    def _send_job(self, segments: list[Path]) -> None:
        if self._pipe is None:
            return
        try:
            self._pipe.send([str(p) for p in segments])
            self._jobs.append(list(segments))
        except (BrokenPipeError, OSError):
            self._checkpointer_gone()

    def close(self) -> None:
        """Write the log out; let a running checkpoint finish briefly, never block
        long. After a failed write nothing more is written (nothing unwritten was
        ever acknowledged)."""
        if self._fd is not None:
            try:
                self.sync()
            except DiskError:
                pass
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        if self._checkpointer is not None:
            if self._pipe is not None:
                try:
                    self._pipe.send(None)
                except (BrokenPipeError, OSError):
                    pass
            try:
                self._checkpointer.wait(self.close_wait)
            except subprocess.TimeoutExpired:   # safe at any moment (see checkpointer.py)
                self._checkpointer.kill()
                self._checkpointer.wait()       # gone before the lock is let go
            if self._pipe is not None:
                self._pipe.close()
                self._pipe = None
            self._checkpointer = None
        release(self._lock)               # the checkpointer, which shared it, is gone
        self._lock = None
