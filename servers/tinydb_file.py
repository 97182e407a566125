"""TinyDB's file of a server's folder, written only when told and atomically.

TinyDB's default storage rewrites the whole file on every insert; here the file is
held in memory and written once per fold: staged to ``db.tmp`` a megabyte at a time,
then renamed into place and the folder fsynced (``AtomicJSONStorage``). The
checkpointer (``checkpointer.py``), a process of its own, folds through it, and the
store reads and repairs db.json with it at start-up (``store.py``); this module
imports nothing of the server's, so the checkpointer starts light.
"""
from __future__ import annotations

import os
from pathlib import Path

import orjson
from tinydb import TinyDB
from tinydb.storages import Storage

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
        servers' logs among them (measured: p99 at half load 7 -> 22 ms). A write
        that fails (a full disk) removes ``db.tmp`` before it raises."""
        raw = memoryview(orjson.dumps(self._data or {}))
        try:
            with open(self.tmp, "wb") as f:
                for start in range(0, len(raw), WRITE_CHUNK):
                    f.write(raw[start:start + WRITE_CHUNK])
                    f.flush()
                    os.fdatasync(f.fileno())
                if self.fsync:
                    os.fsync(f.fileno())
        except OSError as exc:          # a full disk: named, as the file it could not write
            self.discard()
            if exc.filename is None:
                raise OSError(exc.errno, exc.strerror, str(self.tmp)) from None
            raise
        except BaseException:
            self.discard()
            raise

    def discard(self) -> bool:
        """Remove ``db.tmp`` if it is there (best effort: a read-only folder keeps
        it until the next start); True if one was removed."""
        try:
            self.tmp.unlink()
            return True
        except OSError:
            return False

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
