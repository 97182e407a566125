"""The log lines tools read, as format constants next to the code that writes them,
and the one parser the tests, the demo and ``run_all.py up`` share.

A writer fills a format (``CLAIM.format(epoch=103)``); a reader gives the same
format to ``parse`` (the first match in a text, its fields as strings) or
``parse_all`` (every match)::

    parse(CLAIM, "... | local - | I am coordinator (epoch 103)")  ->  {"epoch": "103"}

A format matches where a line's field starts (the line's start, after ``| ``, or
after ``: `` for a format told inside another, such as CAUGHT_UP in PHASE).
A field matches a run of characters without a space unless ``FIELDS`` says
otherwise, so change a format here and both sides follow.
"""
from __future__ import annotations

import re
from functools import lru_cache

# --- the formats, by who writes them ---------------------------------------------------
PHASE = "phase {old} -> {new}: {why}"
"""A server's phase change (servers/membership.py, ``set_phase``)."""
SERVING = "local - | phase {old} -> serving: {why}"
"""A server enters the pool: its own line, not a peer's phase it heard of."""
STARTED = "started: {events} events reloaded from {folder}, "
"""A server's start, with the events its folder held (servers/node.py)."""
FETCHED = "EVENTS {events} events, {new} new, more={more}"
"""A catch-up reply a server received from a peer (servers/pulls.py, ``on_EVENTS``)."""
CAUGHT_UP = "caught up: {events} events, digest {digest}; "
"""A joining server has caught up (servers/membership.py)."""
CLAIM = "I am coordinator (epoch {epoch})"
"""A server wins the bully election (servers/election.py)."""
FOLLOW = "coordinator is now s{coordinator} (epoch {epoch})"
"""A server follows a coordinator (servers/election.py)."""
SILENT = "coordinator s{coordinator} silent for {seconds}"
"""A follower's coordinator fell silent (servers/election.py)."""
ROUND = ("berkeley round {number} (epoch {epoch}): readings {readings} median={median} "
         "excluded=[{excluded}] avg={avg} corrections {corrections}")
"""A Berkeley round, as its coordinator logs it (servers/berkeley.py)."""
ADJUSTED = "clock adjusted by {delta_ms} ms (round {round}, coordinator s{coordinator})"
"""A server applies its Berkeley correction (servers/berkeley.py)."""
CLOCK_SET = "clock set by {step_ms} ms from {source}"
"""The broker's first clock correction, from the coordinator (broker/clock_follow.py)."""
CLOCK_CORRECTED = "clock corrected by {step_ms} ms (it was {off_ms} ms off) from {source}"
"""The broker's later, bounded steps (broker/clock_follow.py)."""
LAMPORT_START = "lamport clock starts at L={lamport} (stored ceiling {stored}, "
"""A server's Lamport clock at start (servers/holdings.py, servers/lamport_file.py)."""
READY = "ready: {count} servers serving"
"""``run_all.py up``, on stdout once the cluster serves."""
CHAOS_JUMP = "clock chaos: clock jumped by {jump_ms} ms"
"""A process's clock moved by ``--clock-chaos`` (servers/node.py, clients)."""

FIELDS = {
    "why": r".*",
    "folder": r".+?",
    "readings": r".*?",
    "excluded": r"[^\]]*",
    "corrections": r"s\d+=[+-]?[\d.]+ms(?: s\d+=[+-]?[\d.]+ms)*",
    "seconds": r"\S+",
    "source": r".*",
}
"""Fields that match something other than a run of non-space characters."""


WORD = r"\S+?"
LAST_WORD = r"\S+"
"""A field: a run of non-space characters (the shortest that lets the rest match; the
longest when the field ends the format)."""


@lru_cache(maxsize=None)
def pattern(fmt: str) -> re.Pattern:
    """The regular expression that reads lines written with ``fmt``."""
    from string import Formatter     # here: a user's command writes lines, never reads them
    parts = list(Formatter().parse(fmt))
    out = []
    for i, (literal, field, _spec, _conv) in enumerate(parts):
        out.append(re.escape(literal))
        if field is not None:
            last = i == len(parts) - 1
            out.append(f"(?P<{field}>{FIELDS.get(field, LAST_WORD if last else WORD)})")
    return re.compile(r"(?:^|(?<=\| )|(?<=: ))" + "".join(out), re.M)


def parse(fmt: str, text: str) -> dict[str, str] | None:
    """The fields of the first line in ``text`` written with ``fmt``, or None."""
    m = pattern(fmt).search(text)
    return m.groupdict() if m else None


def parse_all(fmt: str, text: str) -> list[dict[str, str]]:
    """The fields of every line in ``text`` written with ``fmt``, in order."""
    return [m.groupdict() for m in pattern(fmt).finditer(text)]
