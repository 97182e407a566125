"""A server's Lamport clock survives its restarts (``data/server-N.lamport``).

Without it a restarted server began again from the highest stamp its folder
held, and every stamp it had put on messages since (heartbeats, ACKs, votes)
could be issued a second time. So the clock keeps a *ceiling* in a small file
beside the data folder: no stamp above the ceiling is used before a higher one
is on disk (``RESERVE`` ahead, so one write in place per ~1,000 stamps, not one
per message), and a restarted server begins at the stored ceiling: above every
stamp it ever used.

The file is one line, the ceiling and a CRC-32 of its digits::

    00000000000000012000 9a3f01c2

A flipped byte or a truncated file no longer matches its checksum: the server
refuses to start with one line naming the file, rather than start from a
ceiling that could be lower than stamps it used (the clock would go backwards
without a word). Deleting the file starts the clock from the stamps the data
folder holds, as before this file existed.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

from common.clock import LamportClock
from common.protocol import MAX_STAMP
from servers.disk_error import DiskError
from servers.tinydb_file import fsync_dir

RESERVE = 1000
"""Stamps reserved ahead of the clock by each write of the ceiling."""
_WIDTH = 20


def _line(ceiling: int) -> bytes:
    digits = b"%0*d" % (_WIDTH, ceiling)
    return digits + b" %08x\n" % zlib.crc32(digits)


class LamportFile:
    """The ceiling kept on disk: ``read`` once at start, ``write`` in place after."""

    def __init__(self, path: Path | str, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._fd: int | None = None

    def read(self) -> int:
        """The stored ceiling, 0 if there is no file; ValueError if it is damaged."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return 0
        words = raw.split()
        ok = (len(words) == 2 and len(words[0]) == _WIDTH and words[0].isdigit()
              and raw == _line(int(words[0])) and int(words[0]) < MAX_STAMP)
        if not ok:
            raise ValueError(f"{self.path} is damaged ({raw[:32]!r}): it should hold this "
                             f"server's Lamport ceiling and its checksum; delete it to start "
                             f"the clock from the stamps the data folder holds")
        return int(words[0])

    def write(self, ceiling: int) -> None:
        """Store ``ceiling`` (one write in place: a kill cannot tear 30 bytes);
        ``DiskError`` if it cannot be written."""
        try:
            if self._fd is None:
                created = not self.path.exists()
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                if created and self.fsync:
                    fsync_dir(self.path.parent)
            os.pwrite(self._fd, _line(ceiling), 0)
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            raise DiskError(self.path, exc) from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class DurableLamportClock(LamportClock):
    """A Lamport clock that never uses a stamp above the ceiling on disk. Until
    ``attach`` it is a plain clock (the server attaches it once its folder is its own)."""

    def __init__(self, reserve: int = RESERVE) -> None:
        super().__init__()
        self.reserve = reserve
        self.file: LamportFile | None = None
        self.ceiling = 0

    def attach(self, file: LamportFile) -> int:
        """Begin at the stored ceiling (if above the clock) and reserve from there;
        returns the stored ceiling. ValueError if the file is damaged."""
        stored = file.read()
        self.value = max(self.value, stored)
        self.file = file
        self._raise_ceiling()
        return stored

    def _raise_ceiling(self) -> None:
        ceiling = min(self.value + self.reserve, MAX_STAMP - 1)
        self.file.write(ceiling)          # on disk before any stamp above the old one is used
        self.ceiling = ceiling

    def tick(self) -> int:
        value = super().tick()
        if self.file is not None and value > self.ceiling:
            self._raise_ceiling()
        return value

    def merge(self, received: int) -> int:
        value = super().merge(received)
        if self.file is not None and value > self.ceiling:
            self._raise_ceiling()
        return value

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
