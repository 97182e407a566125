"""What a user's client remembers between two commands.

Each CLI command is a new process, but a user is one process in the system's
eyes: their Lamport clock must never go backwards, and their physical clock's
learned correction should survive too. Both live in a small JSON file::

    {"lamport": 42, "clock_offset": -0.0123, "registered": true}
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson

from common import protocol


@dataclass
class UserState:
    path: Path
    lamport: int = 0
    """The user's Lamport clock at the end of their last command."""
    clock_offset: float = 0.0
    """Seconds of Cristian correction learned so far; re-applied at start."""
    registered: bool = False
    """Whether the servers have acknowledged this user's registration."""

    @classmethod
    def load(cls, path: Path | str) -> "UserState":
        """The saved state, or a fresh one if the file is missing or corrupt."""
        path = Path(path)
        try:
            saved = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return cls(path)
        if not _is_valid(saved):
            return cls(path)
        return cls(path, saved["lamport"], float(saved["clock_offset"]), saved["registered"])

    def save(self) -> None:
        """Write atomically: a crash leaves the old file or the new, never half of one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = orjson.dumps({"lamport": self.lamport, "clock_offset": self.clock_offset,
                             "registered": self.registered})
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                    suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def _is_valid(saved: object) -> bool:
    if not isinstance(saved, dict):
        return False
    lamport, offset = saved.get("lamport"), saved.get("clock_offset")
    return (isinstance(lamport, int) and not isinstance(lamport, bool)
            and 0 <= lamport <= protocol.MAX_STAMP - 1
            and isinstance(offset, (int, float)) and not isinstance(offset, bool)
            and isinstance(saved.get("registered"), bool))
