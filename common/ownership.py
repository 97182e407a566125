"""One owner per data folder and per log file: an exclusive ``flock``, taken
before the folder or the file is touched.

Without it a second ``run_all.py up`` on the same folders created a log segment
inside the live server's folder before it failed (issue 11, row 7), and two
processes writing one log interleave their lines. With it the second process
exits at once with one line on stderr, having written nothing::

    error: data/server-1 is in use by another process (pid 1234)

The lock lives as long as some process holds the open file: the kernel drops it
when the owner dies, however it dies, so there is nothing to clean up. A
server's checkpointer inherits its folder's lock, so no new server folds into
the folder while the old checkpointer (killed with its server, a few ms later)
may still be writing: a claim finding the lock held by a process that is gone
waits briefly for its children to let go.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time

LOCK_FILE = "LOCK"
"""The file in a data folder that its owner locks; it holds the owner's pid."""
ORPHAN_WAIT = 3.0
"""Seconds a claim waits for a lock whose taker is dead (its children still hold it)."""


class InUse(OSError):
    """Another live process owns the folder or file; ``str()`` is the line to print."""


class CannotWrite(OSError):
    """The folder or file cannot be created or written (read-only, no permission, a
    file where a folder should be); ``str()`` is the line to print::

        cannot write data/server-3 (Read-only file system): a server needs its data folder writable
    """

    def __init__(self, name: Path | str, exc: OSError, need: str | None = None) -> None:
        why = None
        if exc.errno in (errno.ENOTDIR, errno.EEXIST) and exc.filename:
            from pathlib import Path     # here: a user's command imports this module, not pathlib
            why = _not_a_folder(Path(exc.filename), Path(name))
        line = f"cannot write {name} ({why or exc.strerror or exc})"
        super().__init__(exc.errno, line + (f": {need}" if need else ""))

    def __str__(self) -> str:
        return self.strerror


def _not_a_folder(path: Path, name: Path) -> str | None:
    """``data is a file, not a folder`` when ``path`` or a folder above it is a file
    (``it is …`` when that is ``name``)."""
    for where in (path, *path.parents):
        if where.is_dir():
            return None
        if where.exists():
            return f"{'it' if where == name else where} is a file, not a folder"
    return None


def claim(path: Path | str, name: Path | str | None = None, record_pid: bool = False,
          orphan_wait: float = ORPHAN_WAIT, need: str | None = None) -> int:
    """Lock ``path`` for this process (created if missing, otherwise left as it is);
    returns the descriptor, which holds the lock until it is closed.

    Raises ``InUse``, naming ``name`` (default ``path``) and the holder's pid, at
    once if a live process holds the lock, and ``CannotWrite`` (naming the same,
    and saying ``need``) if the file cannot be created or opened for writing: a
    read-only folder is refused here, before anything is written. ``record_pid``
    writes this process's pid into the file once it is ours (for a lock file, not
    for a log; best effort: a full disk leaves the file as it was)."""
    from pathlib import Path         # here: a user's command locks nothing
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise CannotWrite(name or path, exc, need) from None
    deadline = time.monotonic() + orphan_wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = holder_pid(path)
            if (holder is not None and pid_alive(holder)) or time.monotonic() >= deadline:
                os.close(fd)
                known = f" (pid {holder})" if holder is not None else ""
                raise InUse(f"{name or path} is in use by another process{known}") from None
            time.sleep(0.01)        # its taker is dead: its children let go within ms
        except BaseException:
            os.close(fd)
            raise
    if record_pid:
        pid = b"%d\n" % os.getpid()
        try:                    # written over the old pid, so a full disk rarely refuses it
            os.pwrite(fd, pid, 0)
            os.ftruncate(fd, len(pid))
        except OSError:         # a full disk: /proc/locks still names the holder
            pass
    return fd


def release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def holder_pid(path: Path) -> int | None:
    """The pid that took the flock on ``path`` (from /proc/locks; else the pid the
    file records), or None if unknown."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            locks = f.read().splitlines()
    except OSError:
        locks, st = [], None
    if st is not None:
        device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in locks:
            parts = line.split()
            # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2147318 0 EOF"
            if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == device:
                try:
                    return int(parts[4])
                except ValueError:
                    break
    try:
        with open(path, "rb") as f:
            return int(f.read(32).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
