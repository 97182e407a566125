"""How the demo tells what happens.

Every line it says carries the seconds since the start. While the demo waits
(``idle``, ``wait``), the narrator keeps looking (``pump``): new lines of the
servers' logs (Berkeley rounds, elections, a coordinator found silent), new
records of the bots' reports, and status a moment after a round, to show the
clocks it set -- and tells what deserves it.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, TextIO

from common import log_lines as LL
from clients.demo.watch import (Activity, BerkeleyRound, ChaosJumps, Watch, clock_spread,
                                skew_line)
from common.config import Config
from common.processes import wait_until
from common.timeline import Entry

PUMP = 0.1
"""Seconds between two looks at the logs, reports and status while waiting."""
ROUND_EVERY = 9.0
"""Seconds between two Berkeley rounds told (the first of each coordinator is always)."""
AFTER_ROUND = 0.4
"""Seconds after a round's log line that status is read to show its effect."""
CHAOS_NOTE_MS = 50.0
"""A spread this wide right after a round means a chaos jump came in between."""

CLAIM_RE = LL.pattern(LL.CLAIM)
SILENCE_RE = LL.pattern(LL.SILENT)
"""Lines of servers/election.py's log: a won election, a coordinator found silent."""


class Narrator:
    """The demo's voice, and its eyes while it waits."""

    def __init__(self, config: Config, users: list[str], out: TextIO) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.watch = Watch(config, users)
        self.activity = Activity(self.say, config.replicas)
        self.rounds: list[BerkeleyRound] = []
        self.coordinators: list[tuple[str, int]] = []    # (server, epoch) of each claim
        self.jumps = ChaosJumps()
        self.problems: list[str] = []
        self._round_told_at = -ROUND_EVERY
        self._epochs_told: set[int] = set()
        self._after_round_at: float | None = None

    # --- telling ---------------------------------------------------------------------------
    def say(self, text: str) -> None:
        self.out.write(f"[{time.monotonic() - self.t0:5.1f}s] {text}\n")
        self.out.flush()

    def section(self, title: str) -> None:
        self.write(f"\n== {title} ==\n")

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.say(f"!! {text}")

    def write(self, text: str) -> None:
        """``text`` as it is (tables, the last lines)."""
        self.out.write(text)
        self.out.flush()

    # --- looking while waiting --------------------------------------------------------------
    def pump(self) -> None:
        """Take in new server log lines and bot records; tell what deserves it."""
        for entry in self.watch.server_lines():
            self.on_server_line(entry)
        for record in self.watch.records():
            self.activity.add(record)
        now = time.monotonic()
        if self._after_round_at is not None and now >= self._after_round_at:
            self._after_round_at = None
            rows = self.watch.rows()
            jumped = (clock_spread(rows) or 0) > CHAOS_NOTE_MS
            self.say(f"   after the round, each clock minus the host's: {skew_line(rows)}"
                     + (" (a chaos jump since; the next round pulls it back)" if jumped else ""))
        if self.activity.ready and self.activity.summary_due(now):
            self.say(self.activity.summarize(now))

    def on_server_line(self, entry: Entry) -> None:
        if "berkeley round" in entry.rest:
            r = BerkeleyRound.parse(entry)
            if r is not None:
                self.rounds.append(r)
                self.jumps.round_at(entry.lamport)
                self.tell_round(r)
        elif "clock chaos" in entry.rest:
            self.jumps.note(entry)
        elif (claim := CLAIM_RE.search(entry.rest)) is not None:
            self.coordinators.append((entry.process, int(claim[1])))
        elif (silence := SILENCE_RE.search(entry.rest)) is not None:
            self.say(f"{entry.process}: {silence[0]}: it calls an election")

    def tell_round(self, r: BerkeleyRound) -> None:
        now = time.monotonic()
        if r.epoch in self._epochs_told and now - self._round_told_at < ROUND_EVERY:
            return
        self._epochs_told.add(r.epoch)
        self._round_told_at = now
        for line in r.describe():
            self.say(line)
        self._after_round_at = now + AFTER_ROUND   # a heartbeat later, status shows the result

    def idle(self, until: float) -> None:
        while time.monotonic() < until:
            self.pump()
            time.sleep(PUMP)

    def wait(self, condition: Callable, timeout: float, what: str):
        def look():
            self.pump()
            return condition()
        return wait_until(look, timeout, interval=PUMP, what=what)

    def close(self) -> None:
        self.watch.close()


def shown(path: Path | str) -> str:
    """A path as short as it can be said from here."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)
