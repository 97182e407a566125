"""A data folder that cannot be written: the error that says so, and the probe that
learns when it can be written again.

Every write of a server's folder (its log segments, db.json, the files kept beside
it: ``issued.py``, ``lamport_file.py``, ``members_file.py``) that fails with an
``OSError`` (ENOSPC, EROFS, EDQUOT, EIO...) is raised as a ``DiskError``, which
names the file, the system's reason and the bytes the write wanted; the server
halts on it (``disk_watch.py``) and ``probe_folder`` tells it when the folder takes
writes again. Only the standard library: the small files kept beside the folder
use it without loading the store.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

PROBE_FILE = ".write-probe"
"""Written and deleted to learn whether a data folder can be written again."""
PROBE_BYTES = 64 * 1024
"""What a probe writes: a folder with less room than this is still full."""
FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskError(OSError):
    """The data folder cannot be written (full, read-only, failing): ``str()`` names
    the file and the system's reason, ``cannot write data/server-3/wal-000002.jsonl:
    No space left on device``."""

    def __init__(self, path: Path | str, cause: OSError, needed: int = 0,
                 detail: str = "") -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.needed = needed
        """Bytes the failed write wanted: the folder is not writable again until it
        has room for them (else the same write fails again after a restart)."""
        self.detail = detail

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"cannot write {self.filename}: {self.strerror}{detail}"

    @property
    def kind(self) -> str:
        """What the operator reads in ``status``: ``disk full``, ``read-only``..."""
        if self.errno in FULL:
            return "disk full"
        if self.errno == errno.EROFS:
            return "read-only"
        return "write error"


def probe_folder(folder: Path, needed: int = 0) -> DiskError | None:
    """Whether ``folder`` has room for ``needed`` bytes and takes ``PROBE_BYTES``
    (written, fsynced, deleted): None if it does, else why not."""
    path = Path(folder) / PROBE_FILE
    want = max(PROBE_BYTES, needed)
    try:
        st = os.statvfs(folder)
    except OSError as exc:
        return DiskError(folder, exc)
    free = st.f_frsize * (st.f_bfree if os.geteuid() == 0 else st.f_bavail)  # root: all
    if free < want:
        return DiskError(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                         detail=f"{free} bytes free, {want} needed")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        return DiskError(path, exc)
    problem = None
    try:
        block = memoryview(bytes(PROBE_BYTES))
        written = 0
        while written < PROBE_BYTES:
            written += os.write(fd, block[written:])
        os.fsync(fd)
    except OSError as exc:
        problem = DiskError(path, exc)
    for undo in (lambda: os.close(fd), path.unlink):
        try:
            undo()
        except OSError as exc:
            problem = problem or DiskError(path, exc)
    return problem
