"""The highest sequence number a server ever issued, kept beside its data folder.

A server that lost its folder (deleted, damaged, restored from an old copy) and
served at once would number its next writes 1, 2, 3 … again: the same
``(origin, seq)`` as writes its peers already hold, so both sets are silently
lost on one side or the other. So every server records, durably and outside its
folder (``data/server-N.issued``), the highest seq it ever issued, before any of
them is acknowledged; a server whose folder holds less of its own origin than
that syncs its own events back from a peer before it serves, and waits (saying
so in its log and in ``status``) while no peer that holds them is reachable.
"""
from __future__ import annotations

import os
from pathlib import Path

from servers.disk_error import DiskError
from servers.tinydb_file import fsync_dir


class IssuedSeq:
    def __init__(self, path: Path, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.highest = self._read()
        self._fd: int | None = None

    def _read(self) -> int:
        try:
            raw = self.path.read_text().strip()
        except FileNotFoundError:
            return 0
        if not raw.isdigit():
            raise ValueError(f"{self.path} is damaged ({raw[:20]!r}): "
                             f"it should hold the highest sequence number this server issued")
        return int(raw)

    def record(self, seq: int) -> None:
        """``seq`` is issued: durable (as the write-ahead log is) before it is acked;
        ``DiskError`` if it cannot be written.

        Called once per loop turn that made events, so it costs one write in place
        of a fixed-width number (a kill cannot tear it), not a file replaced."""
        if seq <= self.highest:
            return
        try:
            if self._fd is None:
                created = not self.path.exists()
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                if created and self.fsync:    # its name must survive a power loss too
                    fsync_dir(self.path.parent)
            os.pwrite(self._fd, b"%020d\n" % seq, 0)
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:            # a full or read-only disk: not issued, not acked
            raise DiskError(self.path, exc) from None
        self.highest = seq

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
