"""Every process's log merged into one timeline, ordered by Lamport clock.

Each log line carries its process's Lamport clock (``common/log.py``): a send
shows the stamp the message carries, a receive the clock after merging that
stamp, which is larger. Ordering every line by ``(L, process)`` therefore
never shows a receive before its send, nor any effect before its cause:
Lamport's clock condition makes the order exact, with no guessing from
wall-clock times. Lines of one process with the same ``L`` keep their order
in the file.

A process restarted with a fresh Lamport clock (a server, a ``status``
command) starts again from a low ``L``; its lines still sit in a correct
causal order, but interleaved with the earlier incarnation's.

``follow`` reads new lines as they are written (``tail -f``). Lines of
different files arrive at different moments (a user's command writes its
log when it ends), so it holds each line for a *reorder window* before
printing: a line is printed once it was read ``window`` seconds ago and
every line before it in Lamport order that has been read is printed. Lines
read within ``window`` of each other thus come out in Lamport order, and a
receive comes out after its send as long as the sender's log line is
written less than ``window`` seconds after the receiver's. A line read
later than that is printed at once, out of Lamport order: most often the
first lines of a process that started after the follower (a new user
starts at L=1), which are concurrent with everything printed before them.
"""
from __future__ import annotations

import heapq
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from common.log import parse_line

LOG_GLOB = "*.log"
DEFAULT_WINDOW = 1.0
"""Seconds ``follow`` holds a line back for lines of other files to catch up."""
POLL_INTERVAL = 0.1
"""Seconds between two reads of the log folder in ``follow``."""


@dataclass(frozen=True, order=True)
class Entry:
    """One log line; entries sort into the timeline."""
    lamport: int
    process: str
    source: str                     # file name: one process may write several files
    position: int                   # line number in that file
    text: str = field(compare=False)
    time: str = field(compare=False)
    rest: str = field(compare=False)


class FileTail:
    """The complete lines appended to one file since the last read."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = Path(path)
        self.offset = offset
        """Bytes already read: pass the file's size to read only what is appended later."""
        self.partial = b""
        self.lines = 0

    def read_lines(self) -> list[str]:
        """New complete lines; a last line without its newline waits for the next read."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:              # truncated or replaced: start over
            self.offset, self.partial = 0, b""
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        *complete, self.partial = (self.partial + data).split(b"\n")
        self.lines += len(complete)
        return [line.decode(errors="replace") for line in complete]


class LogFolder:
    """Every ``*.log`` file of a folder (or those matching ``pattern``), read
    incrementally; new files are picked up."""

    def __init__(self, folder: Path | str, pattern: str = LOG_GLOB) -> None:
        self.folder = Path(folder)
        self.pattern = pattern
        self.tails: dict[str, FileTail] = {}
        self.skipped = 0
        """Lines without a Lamport stamp (not written by a process log)."""

    def read_new(self) -> list[Entry]:
        for path in sorted(self.folder.glob(self.pattern)):
            self.tails.setdefault(path.name, FileTail(path))
        entries = []
        for name, tail in self.tails.items():
            first = tail.lines
            for number, line in enumerate(tail.read_lines(), start=first + 1):
                parsed = parse_line(line)
                if parsed is None:
                    self.skipped += bool(line.strip())
                    continue
                entries.append(Entry(parsed["lamport"], parsed["process"], name, number,
                                     line, parsed["time"], parsed["rest"]))
        return entries


def read_timeline(folder: Path | str) -> list[Entry]:
    """Every line of every log in ``folder``, in Lamport order."""
    return sorted(LogFolder(folder).read_new())


class ReorderBuffer:
    """Holds lines for ``window`` seconds, then releases them in Lamport order."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._heap: list[tuple[Entry, float]] = []
        self.last: Entry | None = None
        self.late = 0
        """Lines released after a line that follows them (read too late to reorder)."""

    def add(self, entries: list[Entry], now: float) -> None:
        for entry in entries:
            heapq.heappush(self._heap, (entry, now))

    def release(self, now: float) -> list[Entry]:
        out = []
        while self._heap and self._heap[0][1] + self.window <= now:
            entry, _ = heapq.heappop(self._heap)
            if self.last is not None and entry < self.last:
                self.late += 1
            else:
                self.last = entry
            out.append(entry)
        return out


def print_timeline(folder: Path | str, out: TextIO = sys.stdout,
                   err: TextIO = sys.stderr) -> int:
    """Print the merged timeline once; returns the number of lines printed."""
    logs = LogFolder(folder)
    entries = sorted(logs.read_new())
    _write(out, entries)
    if logs.skipped:
        err.write(f"({logs.skipped} lines without a Lamport stamp left out)\n")
    return len(entries)


def follow_timeline(folder: Path | str, window: float = DEFAULT_WINDOW,
                    out: TextIO = sys.stdout) -> None:
    """Print what is there in Lamport order, then new lines as they come, until Ctrl-C."""
    logs = LogFolder(folder)
    backlog = sorted(logs.read_new())
    _write(out, backlog)
    buffer = ReorderBuffer(window)
    buffer.last = backlog[-1] if backlog else None
    try:
        while True:
            now = time.monotonic()
            buffer.add(logs.read_new(), now)
            _write(out, buffer.release(now))
            time.sleep(POLL_INTERVAL)
    finally:                                # Ctrl-C: what is held still gets printed
        buffer.add(logs.read_new(), time.monotonic())
        _write(out, buffer.release(float("inf")))


def _write(out: TextIO, entries: list[Entry]) -> None:
    for entry in entries:
        out.write(entry.text + "\n")
    if entries:
        out.flush()
