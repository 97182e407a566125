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

One owner per folder: the store locks ``LOCK`` before it touches anything else
(``common/ownership.py``); a second process on the folder gets ``InUse`` and
writes nothing.

What survives what: an acknowledged event is in the OS page cache (flush) or
on disk (``fsync=True``) before the ack, so it survives a kill of the process
(SIGKILL) either way, and a power loss only with fsync. A torn last line (a
kill in the middle of a write) is ignored on reload: it was never acked.

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
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path

import orjson
from tinydb import TinyDB
from tinydb.storages import Storage

from common import protocol as P
from common.ownership import LOCK_FILE, claim, release
from servers.records import key, read_document, read_segment, wal_line

OVERDUE = 4
"""...unless the log holds this many times what was due: under endless load."""
ROOT = Path(__file__).resolve().parent.parent


REJECTED = "rejected.jsonl"
"""Stored records that failed validation at load, kept for the operator."""
TINYDB = "db.json"
DAMAGED = "DAMAGED"
"""Present while the folder is known to have lost events no peer has given back yet."""
CORRUPT = "db.json.corrupt-"
"""A damaged db.json is moved to this name with the first number not yet taken."""
TAG_CHARS = 40
"""What the damage was, as ``status`` shows it (``waiting``), is cut to this length."""


class DamagedFile(ValueError):
    """db.json is not a TinyDB file (``read_folder`` without a ``damaged`` handler)."""
WRITE_CHUNK = 1 << 20
"""Bytes of TinyDB's file written back to disk at a time."""


class AtomicJSONStorage(Storage):
    """TinyDB storage held in memory and written only when told, atomically:
    ``stage`` writes the whole file to ``db.tmp``, ``replace`` renames it into
    place and fsyncs the folder. A kill at any moment leaves the old file or the
    new one (and maybe a stale ``db.tmp``, overwritten by the next stage)."""

    def __init__(self, path: str, fsync: bool = False) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_suffix(".tmp")
        self.fsync = fsync
        self._data = None
        self._loaded = False

    def read(self):
        if not self._loaded:
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                raw = b""
            self._data = orjson.loads(raw) if raw else None
            self._loaded = True
        return self._data

    def write(self, data) -> None:
        self._data = data                 # on disk at the next stage() and replace()
        self._loaded = True

    def stage(self) -> None:
        """Written back to disk a megabyte at a time: a whole file of dirty pages,
        flushed at once by the rename, stalled every writer on the disk, the
        servers' logs among them (measured: p99 at half load 7 -> 22 ms)."""
        raw = memoryview(orjson.dumps(self._data or {}))
        with open(self.tmp, "wb") as f:
            for start in range(0, len(raw), WRITE_CHUNK):
                f.write(raw[start:start + WRITE_CHUNK])
                f.flush()
                os.fdatasync(f.fileno())
            if self.fsync:
                os.fsync(f.fileno())

    def replace(self) -> None:
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)       # the rename itself survives a power loss

    def close(self) -> None:
        pass


def open_tinydb(path: Path, fsync: bool) -> TinyDB:
    return TinyDB(str(path), storage=AtomicJSONStorage, fsync=fsync)


def fsync_dir(folder: Path) -> None:
    """Make the folder's entries (files created, renamed, deleted) durable: without it
    a power loss may undo a rename yet keep a later delete."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def segment_number(path: Path) -> int:
    """``wal-000007.jsonl`` -> 7."""
    return int(path.stem[4:])


def log_segments(folder: Path) -> list[Path]:
    """The folder's log segments by number (a stray ``wal-copy.jsonl`` is not one)."""
    found = [p for p in folder.glob("wal-*.jsonl") if _number(p.stem[4:])]
    return sorted(found, key=segment_number)


def _number(text: str) -> bool:
    """Decimal digits only (``str.isdigit`` alone takes "²" and "٣")."""
    return text.isascii() and text.isdigit()


def tinydb_problem(raw: bytes) -> tuple[dict | None, str | None]:
    """db.json's content as TinyDB holds it (tables of documents by number, each an
    object), or None and what is wrong with it: the checkpointer and the load can
    only work on that shape."""
    if not raw:
        return None, "is empty"
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return None, f"is not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno})"
    if not isinstance(data, dict):
        return None, f"is not a TinyDB file (the top level is {_kind(data)}, not an object)"
    for name, table in data.items():
        if not isinstance(table, dict):
            return None, f"is not a TinyDB file (table {name!r} is {_kind(table)}, not an object)"
        for doc_id, doc in table.items():
            if not _number(doc_id):
                return None, (f"is not a TinyDB file (table {name!r} has a document id "
                              f"{doc_id[:20]!r}, not a number)")
            if not isinstance(doc, dict):
                return None, (f"is not a TinyDB file (document {doc_id} of table {name!r} "
                              f"is {_kind(doc)}, not an object)")
    return data, None


def _kind(value) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def read_folder(folder: Path, set_aside=None, unverified: Counter | None = None,
                damaged=None) -> tuple[dict[tuple[int, int], P.Event], list[Path]]:
    """Every valid event in a data folder by ``(origin, seq)``, each once, and its
    log segments in order: TinyDB first, then the segments. An event in both (a
    fold killed after it replaced db.json, before it deleted the segment) counts
    once, as the segment has it: the next fold rewrites it in place. A record
    invalid or failing its checksum goes to ``set_aside(where, raw)``; those with
    no checksum (written before checksums) are counted in ``unverified[file]``.

    A db.json that is not a TinyDB file (``tinydb_problem``), or one missing although
    the segments show a fold happened, goes to ``damaged(path, problem)`` (which must
    put it out of the way: the checkpointer could not fold into it) and loads nothing;
    without a handler it raises ``DamagedFile``. Reading changes nothing itself."""
    path = folder / TINYDB
    segments = log_segments(folder)
    held: dict[tuple[int, int], P.Event] = {}
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = None
    data, problem = tinydb_problem(raw) if raw is not None else ({}, None)
    if raw is None and segments and segment_number(segments[0]) > 1:
        problem = "is missing (deleted?)"
    if problem is not None:
        if damaged is None:
            raise DamagedFile(f"{path} {problem}")
        damaged(path, problem)
    for number, doc in (data or {}).get("events", {}).items():
        try:
            event, verified = read_document(doc)
        except P.ProtocolError as exc:
            if set_aside is not None:
                set_aside(f"{path} document {number}: {exc}", P.dumps(doc))
            continue
        held[key(event)] = event
        if not verified and unverified is not None:
            unverified[path.name] += 1
    for segment in segments:
        for event in read_segment(segment, set_aside, unverified):
            held[key(event)] = event
    return held, segments


class EventStore:
    """Append events, make them durable, reload them; one instance per server."""

    def __init__(self, folder: Path, fsync: bool = False, checkpoint_min: int = 5000,
                 checkpoint_ratio: float = 0.5, stagger: float = 1.0,
                 quiet_s: float = 0.25, close_wait: float = 2.0) -> None:
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
        self.rejected: list[str] = []     # stored records set aside at load: file, record, why
        self.problems: list[str] = []     # what was wrong with the folder at load, a line each
        self.needs_repair: str | None = None   # what was damaged, until a peer gave it back
        self.unverified: Counter = Counter()   # records loaded without a checksum, by file
        self.stored = 0                   # events in TinyDB or handed to the checkpointer
        self._segment_no = 0
        self._wal = None
        self._unfolded: list[dict] = []   # events in the current segment
        self._dirty = False
        self._checkpointer: subprocess.Popen | None = None
        self._pipe = None
        self._pending = 0                 # jobs sent, not yet answered
        self.lost: str | None = None      # why checkpoints stopped, for the server to log

    # --- start-up -------------------------------------------------------------
    def load(self) -> list[P.Event]:
        """Every valid event on disk, each once (``read_folder``); then the log
        segments go to the checkpointer, and a new segment is opened (the last one
        again if nothing was ever written to it)."""
        self._read_marker()
        held, segments = read_folder(self.folder, self._set_aside, self.unverified,
                                     self._damaged)
        if segments and segments[-1].stat().st_size == 0:
            # never written: folded, it would move the numbers on with no event in
            # db.json, and a later start would take db.json for deleted
            self._segment_no = segment_number(segments.pop()) - 1
        else:
            self._segment_no = segment_number(segments[-1]) if segments else 0
        self._start_checkpointer()
        if segments:            # fold them right away, so the new segment starts empty
            self._send_job(segments)
        self.stored = len(held)
        self._open_segment()
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
        never applied, and a fold leaves it out), and name it for the server's log."""
        self.rejected.append(where)
        record = {"record": where, "raw": raw.decode("utf-8", "replace")}
        with open(self.folder / REJECTED, "ab") as f:
            f.write(P.dumps(record) + b"\n")

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
        path = self.folder / f"wal-{self._segment_no:06d}.jsonl"
        self._wal = open(path, "ab", buffering=1 << 16)
        if self.fsync:                    # its name must survive a power loss too
            fsync_dir(self.folder)
        self._wal_path = path
        self._unfolded = []

    # --- the write path -----------------------------------------------------------
    def append(self, event: P.Event) -> None:
        self._wal.write(wal_line(event))
        self._unfolded.append(event)
        self._dirty = True

    def sync(self) -> None:
        """Make every appended event durable; call before acknowledging them."""
        if not self._dirty:
            return
        self._wal.flush()
        if self.fsync:
            os.fsync(self._wal.fileno())
        self._dirty = False

    def maybe_checkpoint(self, quiet_for: float = float("inf"), idle_s: float = 5.0) -> bool:
        """Rotate the log and hand the full segment to the checkpointer when due
        and the server has been without writes for ``QUIET_S`` (or it is
        ``OVERDUE`` times due); anything unfolded goes after ``idle_s`` quiet."""
        due = int(max(self.checkpoint_min, self.checkpoint_ratio * self.stored) * self.stagger)
        n = len(self._unfolded)
        if not n or not (n >= OVERDUE * due or (n >= due and quiet_for >= self.quiet_s)
                         or quiet_for >= idle_s):
            return False
        self.sync()
        self._wal.close()
        self._send_job([self._wal_path])
        self.stored += len(self._unfolded)
        self._open_segment()
        return True

    def finished(self) -> list[tuple[int, float]]:
        """Checkpoints done since the last call: (events folded, seconds)."""
        done = []
        try:
            while self._pending and self._pipe is not None and self._pipe.poll():  # a select
                folded, seconds, jobs = self._pipe.recv()
                self._pending -= jobs
                done.append((folded, seconds))
        except (EOFError, OSError):
            self._checkpointer_gone()
        return done

    def _checkpointer_gone(self) -> None:
        """Killed, or failed: the segments it did not fold wait for the next start."""
        if self._pipe is not None:
            self._pending = 0
            self._pipe.close()
            self._pipe = None
            self.lost = "the checkpointer is gone: log segments are folded at the next start"

    def _send_job(self, segments: list[Path]) -> None:
        if self._pipe is None:
            return
        try:
            self._pipe.send([str(p) for p in segments])
            self._pending += 1
        except (BrokenPipeError, OSError):
            self._checkpointer_gone()

    def close(self) -> None:
        """Flush the log; let a running checkpoint finish briefly, never block long."""
        if self._wal is not None:
            self.sync()
            self._wal.close()
            self._wal = None
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
                self._checkpointer.wait(1.0)
            if self._pipe is not None:
                self._pipe.close()
                self._pipe = None
            self._checkpointer = None
        release(self._lock)               # the checkpointer, which shared it, is gone
        self._lock = None

