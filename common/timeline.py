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

Views (``run_all.py timeline`` options, ``View`` here):

* ``order``: ``time`` (the default) sorts by each line's wall time, as things
  happened: a fresh user's first command (its Lamport clock starts at 1) sits
  where it was typed, not at the top. Clocks differ, though (a user's is set
  only by its first reply; ``--clock-chaos`` moves the servers' by up to 1 s
  between two Berkeley rounds), so a line's time is pushed, never pulled, to
  keep causes first: each line comes after the line before it in its file and
  after every line of the same request or event (``rid=``/``id=``) lower in
  Lamport order (``causal_times``). ``lamport`` sorts by ``(L, process)``: exact
  causal order for every message, but concurrent lines are placed by their
  counters (a new user's first line comes first). ``--follow`` prints in Lamport
  order (each line as soon as the reorder window allows).
* filters: ``user`` (that user's client lines and every line naming them),
  ``only`` (one kind: ``writes``, ``membership``, ``election``, ``clock``),
  ``hide`` (message types such as ``HB,BEAT``), ``since``/``until`` (a clock
  time ``HH:MM:SS`` or a duration from the end, ``-30s``, or the start, ``+10s``).
* ``compact``: every write's trail -- the user's request, the broker's route,
  the origin's EVENT, the copies' EVENTs and every ACK -- folds into one line
  where it was acknowledged: ``write | post 8d2b by alice held by 3 in 7.9 ms``.
"""
from __future__ import annotations

import dataclasses
import heapq
import re
from datetime import datetime, timedelta
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, TextIO

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


ORDERS = ("time", "lamport")
KINDS = {
    "writes": {"EVENT", "ACK"},
    "membership": {"READY", "LEAVE", "BYE", "FETCH", "EVENTS", "COMPARE", "SUMS", "RANGE",
                   "COPIES"},
    "election": {"ELECTION", "ANSWER", "COORDINATOR"},
    "clock": {"TIME_QUERY", "TIME_REPLY", "TIME_ADJUST"},
}
"""The message types of each kind ``--only`` picks."""
NOTE_WORDS = {
    "membership": re.compile(r"\b(phase|members?|joined|joins|left|leaves|gone|started|stopped|"
                             r"caught up|halted|repair)\b"),
    "election": re.compile(r"\b(coordinator|election|epoch)\b"),
    "clock": re.compile(r"\b(clock|berkeley)\b"),
}
"""A local note (``local - | …``) of each kind, by its words (the clock first: a
clock note names the coordinator and the epoch too)."""
FOLDED = "write | "
"""What a folded write's line says where others name their direction and peer."""
EVENT_RE = re.compile(r"\| EVENT (?P<kind>\w+) id=(?P<id>\S+) \d+:\d+ by (?P<user>\S+) L=")
ID_RE = re.compile(r"\b(?:rid|id)=([0-9a-zA-Z-]+)")
REPLY_RE = re.compile(r"^send (?P<user>\S+) \| reply rid=(?P<rid>\S+) ok replicas=(?P<n>\d+)")
DURATION_RE = re.compile(r"^(?P<sign>[+-]?)(?P<n>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)$")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def write_ids_of(entries: Iterable[Entry]) -> set[str]:
    """The ids of the writes (events) whose EVENT lines are in ``entries``."""
    return {m["id"] for e in entries if (m := EVENT_RE.search(e.text))}


def message_type(entry: Entry) -> str:
    """The first word of what a line says (``EVENT``, ``HB``, ``post``, ``phase``)."""
    what = entry.rest.split(" | ", 1)[-1]
    return what.split(" ", 1)[0].rstrip(":")


def kind_of(entry: Entry, write_ids: set[str]) -> str | None:
    """``writes``, ``membership``, ``election``, ``clock`` or None (requests, heartbeats)."""
    if entry.rest.startswith(FOLDED):
        return "writes"
    mtype = message_type(entry)
    for kind, types in KINDS.items():
        if mtype in types:
            return kind
    found = ID_RE.search(entry.rest)
    if found and found.group(1) in write_ids:
        return "writes"
    if entry.rest.startswith("local - |"):
        for kind in ("clock", "election", "membership"):
            if NOTE_WORDS[kind].search(entry.rest):
                return kind
    return None


def wall(entry: Entry) -> datetime:
    return datetime.fromisoformat(entry.time)


def parse_when(text: str, first: datetime, last: datetime) -> datetime:
    """A moment of the logs (UTC, as they are written): ``YYYY-MM-DD HH:MM:SS[.f]``
    (or with a ``T``); ``HH:MM:SS[.f]`` on the logs' day (of a run that crossed
    midnight, the first day on which that clock time falls within the logs, else
    the last day); ``-30s`` before the last line, ``+10s`` after the first, ``30s``
    the same as ``-30s``. ValueError if it is none of these."""
    text = text.strip()
    m = DURATION_RE.match(text)
    if m:
        span = timedelta(seconds=float(m["n"]) * UNITS[m["unit"]])
        return first + span if m["sign"] == "+" else last - span
    fraction = ".%f" if "." in text else ""
    for layout in (f"%Y-%m-%d %H:%M:%S{fraction}", f"%Y-%m-%dT%H:%M:%S{fraction}"):
        try:
            return datetime.strptime(text, layout)
        except ValueError:
            pass
    try:
        clock = datetime.strptime(text, f"%H:%M:%S{fraction}").time()
    except ValueError:
        raise ValueError(f"{text!r} is neither a time (HH:MM:SS, or YYYY-MM-DD HH:MM:SS; UTC "
                         f"as in the logs) nor a duration such as -30s, +10s, 2m") from None
    day = first.date()
    while day <= last.date():
        moment = datetime.combine(day, clock)
        if first <= moment <= last:
            return moment
        day += timedelta(days=1)
    return datetime.combine(last.date(), clock)


@dataclass
class View:
    """What of the timeline to show, and in which order (see the module's doc)."""
    order: str = "time"
    user: str | None = None
    only: str | None = None
    hide: frozenset[str] = frozenset()
    since: str | None = None
    until: str | None = None
    compact: bool = False

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"--order is one of {', '.join(ORDERS)}, not {self.order!r}")
        if self.only is not None and self.only not in KINDS:
            raise ValueError(f"--only is one of {', '.join(KINDS)}, not {self.only!r}")
        self.hide = frozenset(t.strip().lower() for t in self.hide if t.strip())

    def apply(self, entries: list[Entry]) -> list[Entry]:
        """The lines to print, in order (compact lines folded in)."""
        entries = sorted(entries)
        if self.order == "time":
            times = causal_times(entries)
            entries.sort(key=lambda e: (times[e], e))
        write_ids = write_ids_of(entries)
        if self.compact:
            entries = fold_writes(entries, write_ids)
        keep = self.filter(entries, write_ids)
        return [e for e in entries if keep(e)]

    def filter(self, entries: list[Entry], write_ids: set[str]) -> Callable[[Entry], bool]:
        """Whether a line passes the filters (``--since``/``--until`` measured on
        ``entries``; ``write_ids``: the ids of writes, for ``--only writes``)."""
        lo = hi = None
        if entries and (self.since or self.until):
            times = [wall(e) for e in entries]
            first, last = min(times), max(times)
            lo = parse_when(self.since, first, last) if self.since else None
            hi = parse_when(self.until, first, last) if self.until else None
        named = re.compile(rf"(?<![\w-]){re.escape(self.user)}(?![\w-])") if self.user else None

        def keep(e: Entry) -> bool:
            if self.hide and message_type(e).lower() in self.hide:
                return False
            if self.only is not None and kind_of(e, write_ids) != self.only:
                return False
            if named is not None and e.process not in (f"client-{self.user}", f"bot-{self.user}") \
                    and not named.search(e.rest):
                return False
            if lo is not None or hi is not None:
                t = wall(e)
                if (lo is not None and t < lo) or (hi is not None and t > hi):
                    return False
            return True
        return keep


def causal_times(entries: list[Entry]) -> dict[Entry, datetime]:
    """Each line's wall time, pushed later where a clock was behind: never before the
    line before it in its file, nor before a line of the same request or event (the
    same ``rid=``/``id=``) that is lower in Lamport order (``entries``: in that order)."""
    step = timedelta(microseconds=1)
    out: dict[Entry, datetime] = {}
    last_in_file: dict[str, datetime] = {}
    last_of_id: dict[str, datetime] = {}
    for e in entries:
        t = wall(e)
        before = last_in_file.get(e.source)
        if before is not None and t < before:
            t = before
        found = ID_RE.search(e.rest)
        if found is not None:
            cause = last_of_id.get(found.group(1))
            if cause is not None and t <= cause:
                t = cause + step
            last_of_id[found.group(1)] = max(t, last_of_id.get(found.group(1), t))
        out[e] = last_in_file[e.source] = t
    return out


def fold_writes(entries: list[Entry], write_ids: set[str]) -> list[Entry]:
    """Each write's trail as one line, where its origin acknowledged it (``entries`` in
    timeline order): every line naming a write's id and every ACK leaves; in the place
    of the origin's ``reply … ok`` comes ``write | post 8d2b by alice held by 3 in 7.9 ms``
    (the copies the reply counted; the time from the origin's receipt of the request).
    A write never acknowledged folds into ``… held by N, not acknowledged``."""
    events: dict[str, dict] = {}
    for e in entries:
        m = EVENT_RE.search(e.text)
        if m and e.rest.startswith("send bus |"):
            events.setdefault(m["id"], {"kind": m["kind"], "user": m["user"], "origin": e,
                                        "holders": {e.process}})
    for e in entries:
        m = EVENT_RE.search(e.text)
        if m and m["id"] in events:
            events[m["id"]]["holders"].add(e.process)
    received: dict[tuple[str, str], Entry] = {}
    out: list[Entry] = []
    acked: set[str] = set()
    for e in entries:
        if message_type(e) == "ACK":
            continue
        found = ID_RE.search(e.rest)
        wid = found.group(1) if found else None
        if wid is None or wid not in write_ids:
            out.append(e)
            continue
        if e.rest.startswith("recv ") and e.process.startswith("server-"):
            received.setdefault((e.process, wid), e)
        reply = REPLY_RE.match(e.rest)
        info = events.get(wid)
        if reply and info is not None and wid not in acked:
            acked.add(wid)
            start = received.get((e.process, wid), info["origin"])
            ms = (wall(e) - wall(start)).total_seconds() * 1000
            out.append(_folded(e, f"{info['kind']} {wid[:4]} by {info['user']} held by "
                                  f"{reply['n']} in {ms:.1f} ms"))
    for wid, info in events.items():
        if wid not in acked:                # the trail of a write nobody acknowledged
            out.append(_folded(info["origin"], f"{info['kind']} {wid[:4]} by {info['user']} "
                                               f"held by {len(info['holders'])}, not "
                                               f"acknowledged"))
    return _resort(out, entries)


def _resort(out: list[Entry], entries: list[Entry]) -> list[Entry]:
    """``out`` back in the order of ``entries`` (folded lines at their line's place)."""
    place = {(e.source, e.position): i for i, e in enumerate(entries)}
    return sorted(out, key=lambda e: place[(e.source, e.position)])


def _folded(at: Entry, what: str) -> Entry:
    text = f"{at.time} | L={at.lamport} | {at.process} | {FOLDED}{what}"
    return Entry(at.lamport, at.process, at.source, at.position, text, at.time, FOLDED + what)


def print_timeline(folder: Path | str, out: TextIO = sys.stdout,
                   err: TextIO = sys.stderr, view: View | None = None) -> int:
    """Print the merged timeline once; returns the number of lines printed."""
    logs = LogFolder(folder)
    entries = (view or View(order="lamport")).apply(logs.read_new())
    _write(out, entries)
    if logs.skipped:
        err.write(f"({logs.skipped} lines without a Lamport stamp left out)\n")
    return len(entries)


def follow_timeline(folder: Path | str, window: float = DEFAULT_WINDOW,
                    out: TextIO = sys.stdout, view: View | None = None) -> None:
    """Print what is there in Lamport order, then new lines as they come, until Ctrl-C
    (``view``'s filters; not ``compact``, which needs a write's whole trail)."""
    view = dataclasses.replace(view or View(), order="lamport")
    logs = LogFolder(folder)
    there = logs.read_new()
    backlog = view.apply(there)
    _write(out, backlog)
    buffer = ReorderBuffer(window)
    buffer.last = backlog[-1] if backlog else None
    show = view.filter(there, write_ids_of(there))
    try:
        while True:
            now = time.monotonic()
            buffer.add(logs.read_new(), now)
            _write(out, [e for e in buffer.release(now) if show(e)])
            time.sleep(POLL_INTERVAL)
    finally:                                # Ctrl-C: what is held still gets printed
        buffer.add(logs.read_new(), time.monotonic())
        _write(out, [e for e in buffer.release(float("inf")) if show(e)])


def _write(out: TextIO, entries: Iterable[Entry]) -> None:
    entries = list(entries)
    for entry in entries:
        out.write(entry.text + "\n")
    if entries:
        out.flush()
