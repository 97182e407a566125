"""A server that cannot write its data folder (full, read-only, failing) halts
until it can, then starts again from what the folder holds.

Why halt rather than go on: a write is acknowledged only once its event is in
the log (``store.py``), so a server whose log takes nothing more could only
hold events in memory that its disk lacks, and count them as copies. So on the
first ``DiskError`` (a sync, a new segment, the issued seq) the server stops:
the turn's events are neither announced nor acknowledged, waiting writers are
answered ``unavailable`` (they retry elsewhere, under the same request id), and
it leaves the pool as a clean leave does (``Membership.halt``: LEAVE, BYE), so
its peers stop counting it at once and keep acknowledging with the copies they
have. It logs one line, and its status row (phase ``halted``) says why::

    cannot write data/server-3/wal-000002.jsonl: No space left on device: I stop
    acknowledging and leave the pool; I rejoin by myself once data/server-3 can be written
    waiting: disk full: data/server-3 (No space left on device); rejoining once it can write

While halted it probes the folder every ``probe_every`` seconds
(``store.probe_folder``: room for the write that failed, and 64 KiB written,
fsynced, deleted), saying nothing of a failed probe but one line every
``remind_every``. The room matters: a batch of a few megabytes (a catch-up
reply) that did not fit is cut back whole, which frees what it took, so a
64 KiB probe alone would restart the server into the same failure again and
again. Once a probe goes through it
says so in one line and sets ``restart``: the server closes everything and
re-executes itself (``servers/__main__.py``), a fresh start from what the
folder holds that rejoins through the usual join and sync.

A server that cannot write its folder from the start (the first probe, or its
new log segment) halts the same way before it ever serves.

Pure logic: the probe is given, no clock reads; ``now`` is ``time.monotonic()``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from common.log import ProcessLog
from servers.disk_error import DiskError

WAITING_MAX = 200
"""``ServerStatus.waiting`` holds at most this many characters."""


class DiskWatch:
    def __init__(self, folder: Path, log: ProcessLog | None,
                 probe: Callable[[int], DiskError | None], probe_every: float = 1.0,
                 remind_every: float = 60.0) -> None:
        self.folder = Path(folder)
        self.log = log
        self._probe = probe
        self.probe_every = probe_every
        self.remind_every = remind_every
        self.failure: DiskError | None = None   # the write that halted the server
        self.restart = False                    # the folder takes writes again
        self._probe_at = 0.0
        self._remind_at = 0.0

    @property
    def halted(self) -> bool:
        return self.failure is not None

    def check(self) -> DiskError | None:
        """At start-up: whether the folder takes a write now (None if it does)."""
        return self._probe(0)

    def fail(self, failure: DiskError, now: float, at_start: bool = False) -> bool:
        """A write failed: halted from now on, said in one line. True the first
        time; later failures (while halted) change nothing."""
        if self.failure is not None:
            return False
        self.failure = failure
        self._probe_at = now + self.probe_every
        self._remind_at = now + self.remind_every
        if self.log is not None:
            what = ("I do not join the pool; I start again by myself" if at_start else
                    "I stop acknowledging and leave the pool; I rejoin by myself")
            self.log.warn(f"{failure}: {what} once {self.folder} can be written")
        return True

    @property
    def waiting(self) -> str | None:
        """Why I am halted, for ``status``."""
        if self.failure is None:
            return None
        head = f"{self.failure.kind}: "
        tail = f" ({self.failure.strerror}); rejoining once it can write"
        folder, room = str(self.folder), max(2, WAITING_MAX - len(head) - len(tail))
        if len(folder) > room:                  # a deep path: its end names the folder
            folder = "…" + folder[-(room - 1):]
        return (head + folder + tail)[:WAITING_MAX]

    def next_deadline(self) -> float | None:
        return self._probe_at if self.halted and not self.restart else None

    def tick(self, now: float) -> None:
        """The periodic job while halted: probe; once the folder takes a write, restart."""
        if not self.halted or self.restart or now < self._probe_at:
            return
        self._probe_at = now + self.probe_every
        problem = self._probe(self.failure.needed)
        if problem is None:
            if self.log is not None:
                self.log.note(f"{self.folder} can be written again: restarting to rejoin")
            self.restart = True
        elif now >= self._remind_at:
            self._remind_at = now + self.remind_every
            if self.log is not None:
                self.log.warn(f"still halted: {problem}; probing every "
                              f"{self.probe_every:g} s")
