"""What the servers' logs say, for the checker: coordinator claims, coordinator
spans, and retries onto another server's copy.

The nemesis reads every server's log at the end of a run (``clients/nemesis/run.py``)
and turns the lines that matter into records the checks take
(``clients/nemesis/coordinator_checks.py``, ``history.py``): each ``I am coordinator
(epoch E)`` is a ``Claim``; the time from a claim until the server followed another,
claimed again, stepped down or its incarnation ended is a ``Span`` (less the times
the nemesis paused it); each ``retry of R (try N): held as O:S from try M`` with O
another server is a crossed retry. Log times are the servers' UTC stamps, read as
Unix seconds. Pure functions of the text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from common import log_lines as LL

CLAIM = re.compile(r"^(\S+ \S+) \| L=\d+ \| \S+ \| .*\| I am coordinator \(epoch (\d+)\)", re.M)
LINE = re.compile(r"^(\S+ \S+) \| L=\d+ \| \S+ \| (.*)$")
CLAIM_TEXT = re.compile(r"\| I am coordinator \(epoch (\d+)\)")
FOLLOW_TEXT = re.compile(r"\| coordinator is now s(\d+) \(epoch (\d+)\)")
NEW_LIFE_TEXTS = ("| local - | " + LL.LAMPORT_START.split("{")[0], "| local - | started: ")
"""The first lines a server's process writes: whichever comes first ends its last life
(a killed process writes nothing at its end; its restart's first lines come later)."""
RETRY = re.compile(r"^(\S+ \S+) \| L=\d+ \| \S+ \| local - \| retry of (\w+) \(try \d+\): "
                   r"held as (\d+):\d+ from try \d+", re.M)
STEP_DOWN_TEXT = re.compile(r"\| local - \| .*\b(?:no longer coordinator|steps? down|stepped down|"
                            r"stepping down)\b")
"""A server's own line that it gave up being coordinator (``election.py``: ``stepping
down: …``). Leaving ``serving`` is not one: a coordinator cut off from the bus still
coordinates until it steps down for want of a majority, and counts until then."""


@dataclass(frozen=True)
class Claim:
    server: int
    epoch: int
    t: float


def log_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


def claims_in_log(server: int, text: str) -> list[Claim]:
    return [Claim(server, int(m.group(2)), log_time(m.group(1))) for m in CLAIM.finditer(text)]


@dataclass(frozen=True)
class Span:
    """A time a server was coordinator by its own log: from its claim until it followed
    another, claimed again, left serving or stepped down, or its incarnation's last line."""
    server: int
    epoch: int
    start: float
    end: float


def coordinator_spans(server: int, text: str,
                      paused: list[tuple[float, float]] = ()) -> list[Span]:
    """Its spans as coordinator, less the times it was paused (SIGSTOP: it acts not)."""
    spans: list[Span] = []
    current: tuple[int, float] | None = None     # (epoch, since)
    last = None
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        t, rest = log_time(m.group(1)), "| " + m.group(2)
        if current is not None and any(marker in rest for marker in NEW_LIFE_TEXTS):
            # the previous life ended with its last line
            spans.append(Span(server, current[0], current[1], last))
            current = None
        claim, follow = CLAIM_TEXT.search(rest), FOLLOW_TEXT.search(rest)
        if claim:
            if current is not None:
                spans.append(Span(server, current[0], current[1], t))
            current = (int(claim.group(1)), t)
        elif current is not None and ((follow and int(follow.group(1)) != server)
                                      or STEP_DOWN_TEXT.search(rest)):
            spans.append(Span(server, current[0], current[1], t))
            current = None
        last = t
    if current is not None:
        spans.append(Span(server, current[0], current[1], last))
    for start, end in paused:
        spans = [piece for s in spans for piece in (
            [s] if s.end <= start or s.start >= end else
            [Span(s.server, s.epoch, a, b) for a, b in ((s.start, start), (end, s.end)) if b > a])]
    return spans


def crossed_retries(server: int, text: str) -> list[dict]:
    """The retries ``server`` took while holding an earlier try's copy made by another
    server (its log's ``retry of R (try N): held as O:S from try M``, O not itself)."""
    return [{"rid": m.group(2), "server": server, "origin": int(m.group(3)),
             "t": log_time(m.group(1))}
            for m in RETRY.finditer(text) if int(m.group(3)) != server]
