"""A path spelled as pathlib spells it, without importing pathlib.

A user's command builds three paths (its state file, its log, the broker's key);
importing pathlib for them (with fnmatch, urllib.parse and ipaddress) costs it ~4 ms
of start-up. ``joined`` gives the string ``str(Path(folder, *names))`` would, so
every message naming a path reads as before.
"""
from __future__ import annotations

import os


def joined(folder: str | os.PathLike, *names: str) -> str:
    """``str(pathlib.Path(folder, *names))`` on POSIX, for ``names`` without slashes:
    empty and ``.`` parts dropped, repeated slashes folded, ``//`` kept as a root."""
    folder = os.fspath(folder)
    if folder.startswith("//") and not folder.startswith("///"):
        root = "//"
    else:
        root = "/" if folder.startswith("/") else ""
    parts = [part for part in folder.split("/") if part and part != "."]
    return root + "/".join(parts + list(names)) or "."
