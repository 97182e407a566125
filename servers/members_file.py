"""The member list a server last knew, kept beside its data folder
(``data/server-N.members``, read by ``servers/quorum.py``'s caller).

One line of server ids, ``1 2 3``, replaced whole (written to a temporary file,
then renamed over it: a kill never leaves half a list), fsynced with ``--fsync``.
"""
from __future__ import annotations

import os
from pathlib import Path

from servers.disk_error import DiskError
from servers.tinydb_file import fsync_dir


class MembersFile:
    def __init__(self, path: Path, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync

    def read(self) -> list[int]:
        """The ids kept, or none if there is no file; ValueError if it is damaged."""
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return []
        words = raw.split()
        if not words or not all(w.isdigit() and 1 <= int(w) <= 99 for w in words):
            raise ValueError(f"{self.path} is damaged ({raw[:20]!r}): it should hold the ids "
                             f"of the servers this one last knew as members, such as '1 2 3' "
                             f"(delete it to learn them again from the peers)")
        return sorted({int(w) for w in words})

    def write(self, members: list[int]) -> None:
        """Replace the list; ``DiskError`` if it cannot be written."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "w") as f:
                f.write(" ".join(str(m) for m in members) + "\n")
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)
            if self.fsync:
                fsync_dir(self.path.parent)
        except OSError as exc:
            raise DiskError(self.path, exc) from None
