"""The checks on the cluster's coordinators and clocks: two coordinators at once, the
new epochs, and the spread of the clocks after each Berkeley round.

They take the servers' logs as ``clients/nemesis/server_logs.py`` reads them (claims
and spans) and the broker's status as ``clients/nemesis/monitor.py`` samples it: the
samples (every server's row, every 50 ms) and the distinct rows kept per server
(``Row``). A row counts as fresh for ``fresh_s`` after its Lamport value last
changed: a dead or paused server's last row stays in ``status`` and must not count. What each finding means,
and its bound, is in ``clients/nemesis/history.py``'s docstring. Pure functions of
recorded data.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

from clients.nemesis.server_logs import Claim, Span

OVERLAP_S = 1.0
"""Two serving self-declared coordinators for longer than this count (see
``history.py``)."""
ROUND_GAP = 0.3
"""Corrections this close together belong to one Berkeley round."""


@dataclass(frozen=True)
class Row:
    seen: float
    data: dict


def new_epochs(claims: list[Claim], since: float) -> list[dict]:
    """The distinct epochs first claimed at or after ``since``, each with its claimer
    and the time of its first claim, in time order."""
    first: dict[int, Claim] = {}
    for c in sorted(claims, key=lambda c: c.t):
        first.setdefault(c.epoch, c)
    return [{"epoch": c.epoch, "server": c.server, "t": c.t}
            for c in sorted(first.values(), key=lambda c: c.t) if c.t >= since]


def two_coordinators(claims: list[Claim], spans: list[Span], samples: list[dict],
                     fresh_s: float, overlap_s: float = OVERLAP_S) -> list[dict]:
    """Epochs claimed by two servers; epochs whose coordinator's span overlaps another
    server's for longer than ``overlap_s`` (the newer epoch counts); times two serving
    servers both said they were coordinator in fresh status rows (see ``history.py``'s
    docstring). One entry per epoch."""
    by_epoch: dict[int, list[Claim]] = defaultdict(list)
    for c in claims:
        by_epoch[c.epoch].append(c)
    found: dict[int, dict] = {}
    for epoch, cs in sorted(by_epoch.items()):
        servers = sorted({c.server for c in cs})
        if len(servers) > 1:
            found[epoch] = {"epoch": epoch, "servers": servers, "t": sorted(c.t for c in cs)[1],
                            "how": "claimed in two logs"}
    for a, b in combinations(sorted(spans, key=lambda s: s.start), 2):
        overlap = min(a.end, b.end) - max(a.start, b.start)
        if a.server != b.server and overlap > overlap_s:
            epoch = max(a.epoch, b.epoch)
            found.setdefault(epoch, {"epoch": epoch, "servers": sorted({a.server, b.server}),
                                     "t": max(a.start, b.start), "seconds": round(overlap, 2),
                                     "how": "coordinators at once, by their logs"})
    for window in _overlaps(samples, fresh_s):
        if window["until"] - window["t"] >= overlap_s:
            found.setdefault(window["epoch"], {**window, "how": "both serving as coordinator, "
                                                                "by status rows"})
    return sorted(found.values(), key=lambda f: f["t"])


def _overlaps(samples: list[dict], fresh_s: float) -> list[dict]:
    """Runs of consecutive samples in which two or more fresh serving rows each name
    their own server as coordinator."""
    first_seen: dict[int, tuple[int, float]] = {}
    windows: list[dict] = []
    current = None
    for sample in samples:
        t = sample["t"]
        selves = {}
        for sid, row in sample["rows"].items():
            sid = int(sid)
            if first_seen.get(sid, (None,))[0] != row["lamport"]:
                first_seen[sid] = (row["lamport"], t)
            fresh = t - first_seen[sid][1] <= fresh_s
            if fresh and row["alive"] and row["phase"] == "serving" and row["coordinator"] == sid:
                selves[sid] = row["epoch"]
        if len(selves) > 1:
            if current is None:
                current = {"t": t, "until": t, "servers": sorted(selves),
                           "epoch": max(selves.values())}
                windows.append(current)
            current["until"] = t
            current["servers"] = sorted(set(current["servers"]) | set(selves))
        else:
            if current is not None:
                current["until"] = t
            current = None
    return windows


def clock_rounds(rows: dict[int, list[Row]], fresh_s: float) -> list[dict]:
    """Each Berkeley round seen in the status rows, and the spread of the serving
    servers' clocks right after it."""
    corrections = []          # (host time applied, server, row)
    for sid, kept in rows.items():
        for a, b in zip(kept, kept[1:]):
            if b.data.get("last_sync") is not None and b.data["last_sync"] != a.data.get("last_sync"):
                corrections.append((b.data["last_sync"] - b.data["clock_skew_ms"] / 1000, sid, b))
    corrections.sort(key=lambda c: c[0])
    groups: list[list] = []
    for c in corrections:
        if groups and c[0] - groups[-1][-1][0] <= ROUND_GAP:
            groups[-1].append(c)
        else:
            groups.append([c])
    found = []
    for group in groups:
        end = group[-1][0]
        skews = {sid: row.data["clock_skew_ms"] for _, sid, row in group
                 if row.data["alive"] and row.data["phase"] == "serving"}
        for sid, kept in rows.items():       # the others: their first row after it
            after = [r for r in kept if end < r.seen <= end + fresh_s]
            if sid not in skews and after and after[0].data["alive"] \
                    and after[0].data["phase"] == "serving":
                skews[sid] = after[0].data["clock_skew_ms"]
        if len(skews) > 1:
            found.append({"t": end, "spread_ms": round(max(skews.values()) - min(skews.values()), 3),
                          "skews": skews})
    return found
