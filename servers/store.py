"""Durable storage of one server: a write-ahead log folded into TinyDB.

Why not TinyDB alone: its default storage re-reads and rewrites the whole file
on every insert, so a write costs more the more is stored (measured: 188 acked
posts/s at 1,000 posts). Here a write costs one appended line, flushed before
the ack; a checkpointer process (``checkpointer.py``), the only user of TinyDB
after start-up, folds whole log segments into TinyDB in one ``insert_multiple``
and writes the file atomically. Checkpoints come after ``max(checkpoint_min, ratio * stored)`` new
events, so their total cost stays proportional to the number of writes.

On disk, under ``data/server-<id>/``::

    db.json              TinyDB (table "events"), replaced atomically
    wal-000007.jsonl     log segments not yet folded, one JSON event per line

What survives what: an acknowledged event is in the OS page cache (flush) or
on disk (``fsync=True``) before the ack, so it survives a kill of the process
(SIGKILL) either way, and a power loss only with fsync. A torn last line (a
kill in the middle of a write) is ignored on reload: it was never acked.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import orjson
from tinydb import TinyDB
from tinydb.middlewares import CachingMiddleware
from tinydb.storages import Storage

from servers import checkpointer

CLOSE_WAIT = 2.0
"""Seconds a stopping server waits for a running checkpoint before killing it."""


class AtomicJSONStorage(Storage):
    """TinyDB storage: orjson, written to a temporary file then renamed into place."""

    def __init__(self, path: str, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync

    def read(self):
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return orjson.loads(raw) if raw else None

    def write(self, data) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(data))
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def close(self) -> None:
        pass


def open_tinydb(path: Path, fsync: bool) -> TinyDB:
    db = TinyDB(str(path), storage=CachingMiddleware(AtomicJSONStorage))
    db.storage.storage.fsync = fsync
    return db


class EventStore:
    """Append events, make them durable, reload them; one instance per server."""

    def __init__(self, folder: Path, fsync: bool = False, checkpoint_min: int = 5000,
                 checkpoint_ratio: float = 0.5) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.checkpoint_min = checkpoint_min
        self.checkpoint_ratio = checkpoint_ratio
        self.stored = 0                   # events in TinyDB or handed to the checkpointer
        self._segment_no = 0
        self._wal = None
        self._unfolded: list[dict] = []   # events in the current segment
        self._dirty = False
        self._checkpointer: mp.process.BaseProcess | None = None
        self._pipe = None
        self._pending = 0                 # jobs sent, not yet answered
        self.checkpoints = 0

    # --- start-up -------------------------------------------------------------
    def load(self) -> list[dict]:
        """Every event on disk: TinyDB first, then the log segments in order."""
        db = open_tinydb(self.folder / "db.json", self.fsync)
        events = [dict(e) for e in db.table("events").all()]
        db.close()                        # from now on TinyDB is the checkpointer's
        self.stored = len(events)
        segments = sorted(self.folder.glob("wal-*.jsonl"))
        self._segment_no = int(segments[-1].stem[4:]) if segments else 0
        self._start_checkpointer()
        if segments:            # fold them right away, so the new segment starts empty
            logged = [e for segment in segments for e in read_segment(segment)]
            events.extend(logged)
            self._send_job(segments)
            self.stored += len(logged)
        self._open_segment()
        return events

    def _start_checkpointer(self) -> None:
        ctx = mp.get_context("spawn")
        self._pipe, child_end = ctx.Pipe()
        self._checkpointer = ctx.Process(
            target=checkpointer.main, name=f"checkpointer-{self.folder.name}", daemon=True,
            args=(str(self.folder), self.fsync, child_end, os.getpid()))
        self._checkpointer.start()
        child_end.close()

    def _open_segment(self) -> None:
        self._segment_no += 1
        path = self.folder / f"wal-{self._segment_no:06d}.jsonl"
        self._wal = open(path, "ab", buffering=1 << 16)
        self._wal_path = path
        self._unfolded = []

    # --- the write path -----------------------------------------------------------
    def append(self, event: dict) -> None:
        self._wal.write(orjson.dumps(event) + b"\n")
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

    def maybe_checkpoint(self, idle: bool = False) -> bool:
        """Rotate the log and hand the full segment to the checkpointer when due."""
        due = max(self.checkpoint_min, int(self.checkpoint_ratio * self.stored))
        if not self._unfolded or (len(self._unfolded) < due and not idle):
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
            while self._pending and self._pipe.poll():    # (poll is a select: not for nothing)
                folded, seconds, jobs = self._pipe.recv()
                self._pending -= jobs
                done.append((folded, seconds))
        except (EOFError, OSError):
            self._pending = 0   # checkpointer gone (killed?): segments wait for the next start
        self.checkpoints += len(done)
        return done

    def _send_job(self, segments: list[Path]) -> None:
        try:
            self._pipe.send([str(p) for p in segments])
            self._pending += 1
        except (BrokenPipeError, OSError):
            pass                # checkpointer gone: the segments are folded at the next start

    def close(self) -> None:
        """Flush the log; let a running checkpoint finish briefly, never block long."""
        if self._wal is not None:
            self.sync()
            self._wal.close()
            self._wal = None
        if self._checkpointer is not None:
            try:
                self._pipe.send(None)
            except (AttributeError, BrokenPipeError, OSError):
                pass
            self._checkpointer.join(CLOSE_WAIT)
            if self._checkpointer.is_alive():   # safe at any moment (see checkpointer.py)
                self._checkpointer.kill()
                self._checkpointer.join(1.0)
            self._checkpointer = None


def read_segment(path: Path) -> list[dict]:
    """The events of one log segment (none if it is gone: already folded)."""
    events = []
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return events
    with f:
        for line in f:
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                break           # a torn last line: never acknowledged
    return events
