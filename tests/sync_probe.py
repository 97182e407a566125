"""What the clock and election tests read off a real cluster: log lines and status rows.

Log lines are the servers' own record of what they did (claims, rounds, corrections,
election messages). Status rows are the ground truth for clocks: each server's
``clock_skew_ms`` is its clock minus the host clock, and every process here shares
that host clock. A row shows a server as of its last heartbeat, so ``StatusProbe``
keeps every distinct row it sees (a server's Lamport clock grows with each heartbeat;
a restarted server starts it again, so a probe follows one incarnation of each server).
"""
from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

from common import log_lines as LL
from common import protocol as P
from common.processes import wait_until
from tests.harness import Cluster

BOUND_MS = 5.0
"""Issue 4: synchronized clocks lie within 5 ms of each other."""

CLAIM = LL.pattern(LL.CLAIM)
FOLLOW = LL.pattern(LL.FOLLOW)
ROUND = LL.pattern(LL.ROUND)
READING = re.compile(r"s(\d+)=[+-][\d.]+ms(?:\(rtt ([\d.]+)ms\))?")
CORRECTION = re.compile(r"s(\d+)=([+-][\d.]+)ms")
ADJUST = LL.pattern(LL.ADJUSTED)
ELECTION_SEND = re.compile(r"\| send bus \| (ELECTION|ANSWER|COORDINATOR) ")
SERVER_ID = re.compile(r"\bs(\d+)")


# --- log lines ------------------------------------------------------------------------
def claims(text: str) -> list[int]:
    """The epochs a server claimed as coordinator, in its log's order."""
    return [int(m.group(1)) for m in CLAIM.finditer(text)]


def claimed_epochs(cluster: Cluster, ids) -> dict[int, set[int]]:
    """Every epoch claimed in the logs (all incarnations) -> the servers that claimed it."""
    by_epoch: dict[int, set[int]] = defaultdict(set)
    for sid in ids:
        for epoch in claims(cluster.log_text(f"server-{sid}")):
            by_epoch[epoch].add(sid)
    return dict(by_epoch)


@dataclass(frozen=True)
class RoundLine:
    """One Berkeley round as its coordinator logged it."""
    coordinator: int
    number: int
    epoch: int
    readings: frozenset[int]     # the servers whose offsets went into the round
    excluded: frozenset[int]     # left out of the average
    rtt_ms: dict                 # server -> round trip of its reading (not the coordinator)
    corrections_ms: dict         # server -> the correction it was sent
    line: str


def rounds(text: str, coordinator: int) -> list[RoundLine]:
    found = []
    for line in text.splitlines():
        m = ROUND.search(line)
        if m:
            readings = READING.findall(m["readings"])
            found.append(RoundLine(
                coordinator, int(m["number"]), int(m["epoch"]),
                frozenset(int(sid) for sid, _ in readings),
                frozenset(int(sid) for sid in SERVER_ID.findall(m["excluded"])),
                {int(sid): float(rtt) for sid, rtt in readings if rtt},
                {int(sid): float(ms) for sid, ms in CORRECTION.findall(m["corrections"])},
                line))
    return found


@dataclass(frozen=True)
class Adjustment:
    """One correction a server applied to its clock, as it logged it."""
    delta_ms: float
    round: int
    coordinator: int


def adjustments(text: str) -> list[Adjustment]:
    return [Adjustment(float(m.group(1)), int(m.group(2)), int(m.group(3)))
            for m in ADJUST.finditer(text)]


def election_messages(text: str) -> Counter:
    """ELECTION / ANSWER / COORDINATOR messages this log's server sent."""
    return Counter(m.group(1) for m in ELECTION_SEND.finditer(text))


def log_sizes(cluster: Cluster, ids) -> dict[int, int]:
    """Where each server's log ends now: read on from there with ``log_after``."""
    sizes = {}
    for sid in ids:
        path = cluster.config.log_path(f"server-{sid}")
        sizes[sid] = path.stat().st_size if path.exists() else 0
    return sizes


def log_after(cluster: Cluster, sid: int, offset: int) -> str:
    """What server ``sid`` logged after ``offset`` ("" before it has a log)."""
    try:
        with open(cluster.config.log_path(f"server-{sid}"), "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def spread(values) -> float:
    values = list(values)
    return max(values) - min(values)


# --- status rows ----------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """A server's heartbeat as the broker relayed it, and when this probe first saw it."""
    seen: float          # time.monotonic() of the poll that first showed it
    data: dict

    @property
    def skew_ms(self) -> float:
        return self.data["clock_skew_ms"]


class StatusProbe:
    """Polls the broker's status over one connection and keeps every distinct row."""

    def __init__(self, cluster: Cluster) -> None:
        self._conn = cluster.connection(None, deadline=5.0)
        self.history: dict[int, list[Row]] = defaultdict(list)

    def close(self) -> None:
        self._conn.close()

    def poll(self) -> dict[int, dict]:
        """The live rows now, by server id; new ones are added to ``history``."""
        status = self._conn.request(P.OP_STATUS, {})
        now = time.monotonic()
        live = {s["id"]: s for s in status["servers"] if s["alive"] and "lamport" in s}
        for sid, row in live.items():
            rows = self.history[sid]
            if not rows or row["lamport"] > rows[-1].data["lamport"]:
                rows.append(Row(now, row))
        return live

    def fresh(self, ids, timeout: float, what: str = "fresh status rows",
              accept=lambda rows: True) -> dict[int, dict]:
        """Rows of every server in ``ids`` sent after this call began (and accepted)."""
        ids = set(ids)
        self.poll()             # what the broker holds now may predate this call
        start = {sid: rows[-1].data["lamport"] for sid, rows in self.history.items() if rows}

        def fresh_rows():
            live = self.poll()
            rows = {sid: live[sid] for sid in ids if sid in live
                    and live[sid]["lamport"] > start.get(sid, -1)}
            return rows if set(rows) == ids and accept(rows) else None
        return wait_until(fresh_rows, timeout, interval=0.02, what=what)

    def settled(self, ids, timeout: float, coordinator: int | None = None,
                newer_than: int = -1) -> tuple[int, int]:
        """Fresh rows of ``ids`` agree on one coordinator (``coordinator`` if given)
        and one epoch above ``newer_than``; returns (coordinator, epoch)."""
        def agree(rows):
            views = {(r["coordinator"], r["epoch"]) for r in rows.values()}
            if len(views) != 1:
                return False
            (who, epoch), = views
            return who is not None and epoch > newer_than and \
                (coordinator is None or who == coordinator)
        rows = self.fresh(ids, timeout, what=f"servers {sorted(ids)} agreeing on "
                                             f"coordinator {coordinator or 'any'}", accept=agree)
        row = next(iter(rows.values()))
        return row["coordinator"], row["epoch"]
