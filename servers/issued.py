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


class IssuedSeq:
    def __init__(self, path: Path, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.highest = self._read()

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
        """``seq`` is issued: durable (as the write-ahead log is) before it is acked."""
        if seq <= self.highest:
            return
        tmp = self.path.with_suffix(".issued-tmp")
        with open(tmp, "w") as f:
            f.write(f"{seq}\n")
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.highest = seq
