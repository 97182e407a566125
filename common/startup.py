"""How a process that cannot start says so: one line on stderr, exit code 1, never a
traceback.

What an operator can meet at start-up, and the line it gets (``error: `` first):

* a data folder or log file that cannot be written (read-only, no permission, a file
  where a folder should be): ``ownership.CannotWrite`` names it and says what needs it,
  ``cannot write data/server-3 (Read-only file system): a server needs its data folder
  writable``; the lock is the first thing a process takes, so nothing is written before;
* a folder or log in use by another process: ``ownership.InUse`` names it and the pid;
* a port in use: ``bind`` names the address, ``cannot listen on tcp://127.0.0.1:5656
  (Address already in use): …``;
* any other OSError names its file and the system's reason, ``cannot use
  data/server-3/db.json (Is a directory)``;
* a setting or a file that makes no sense (``ConfigError``, a damaged ``.issued``) says
  which, in its own words.

Anything else is a bug: one line too, naming the exception and where it was raised.
"""
from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager

import zmq


class CannotStart(Exception):
    """A start-up problem; ``str()`` is the line to print."""


def bind(sock: zmq.Socket, endpoint: str) -> None:
    """``sock.bind(endpoint)``, or CannotStart naming the address."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        hint = (": another process has the port (a second cluster on the same --port-base?)"
                if exc.errno == errno.EADDRINUSE else "")
        raise CannotStart(f"cannot listen on {endpoint} ({zmq.strerror(exc.errno)}){hint}") \
            from None


def describe(exc: BaseException) -> str:
    """The one line (without ``error: ``) for a failure at start-up."""
    if isinstance(exc, OSError) and exc.filename and type(exc).__str__ is OSError.__str__:
        return f"cannot use {exc.filename} ({exc.strerror})"
    if isinstance(exc, (CannotStart, OSError, zmq.ZMQError, ValueError)):
        return str(exc)
    import traceback             # only for a bug's line: not every start pays for it
    from pathlib import Path
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{where} (a bug: please report it)"


PRIVATE = 0o077
"""The umask of every process: what it creates (logs, data, keys, a user's state) is
readable by its owner only (files 0600, folders 0700)."""


def private_files() -> None:
    """From here on, this process (and its children) create owner-only files."""
    os.umask(PRIVATE)


@contextmanager
def one_line():
    """Run a process's start (and loop): any failure becomes one ``error: …`` line on
    stderr and exit code 1 (Ctrl-C during start-up: code 130, no line)."""
    import typer                 # here: a user's command imports this module, not typer
    try:
        yield
    except (typer.Exit, SystemExit):
        raise
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - every failure is one line, never a traceback
        print(f"error: {describe(exc)}", file=sys.stderr)
        raise typer.Exit(1) from None
