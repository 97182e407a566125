"""What a user's client remembers between two commands.

Each CLI command is a new process, but a user is one process in the system's
eyes: their Lamport clock must never go backwards, and their physical clock's
learned correction should survive too; so does their session token (``login``).
All live in a small JSON file, readable by its owner only (mode 0600: the token
acts as the user)::

    {"lamport": 42, "clock_offset": -0.0123, "token": "kV3…", "expires": 1767225600.0}

A file of before accounts (``"registered": true``, no token) still loads.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import msgspec

from common import protocol


@dataclass
class UserState:
    """A user's state file as loaded; ``save`` writes it back."""

    path: str | os.PathLike
    """The file (os.path functions, not pathlib: ~4 ms of a command's start-up)."""
    lamport: int = 0
    """The user's Lamport clock at the end of their last command."""
    clock_offset: float = 0.0
    """Seconds of Cristian correction learned so far; re-applied at start."""
    token: str | None = None
    """The session token of the last login (None: logged out, or never logged in)."""
    expires: float = 0.0
    """When the servers stop taking ``token`` (seconds since 1970)."""

    def session(self, now: float) -> str | None:
        """The saved token, unless it has expired (or is about to)."""
        return self.token if self.token and now < self.expires - 60.0 else None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "UserState":
        """The saved state, or a fresh one if the file is missing or corrupt."""
        try:
            with open(path, "rb") as file:
                saved = msgspec.json.decode(file.read())
        except (OSError, msgspec.DecodeError):
            return cls(path)
        if not _is_valid(saved):
            return cls(path)
        token, expires = saved.get("token"), saved.get("expires", 0.0)
        if not (isinstance(token, str) and isinstance(expires, (int, float))
                and not isinstance(expires, bool)):
            token, expires = None, 0.0
        return cls(path, saved["lamport"], float(saved["clock_offset"]), token, float(expires))

    def save(self) -> None:
        """Write atomically: a crash leaves the old file or the new, never half of one.

        The temporary file is this process's own (its pid in the name; a leftover of a
        crashed one with the same pid is replaced), mode 0600 and so the file; no
        ``tempfile``, whose import would cost each command a few ms."""
        folder, name = os.path.split(self.path)
        os.makedirs(folder or ".", mode=0o700, exist_ok=True)
        data = msgspec.json.encode({"lamport": self.lamport, "clock_offset": self.clock_offset,
                             "token": self.token, "expires": self.expires})
        temp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temp, self.path)
        except BaseException:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise


def _is_valid(saved: object) -> bool:
    if not isinstance(saved, dict):
        return False
    lamport, offset = saved.get("lamport"), saved.get("clock_offset")
    return (isinstance(lamport, int) and not isinstance(lamport, bool)
            and 0 <= lamport <= protocol.MAX_STAMP - 1
            and isinstance(offset, (int, float)) and not isinstance(offset, bool))
