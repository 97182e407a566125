"""The checker: what the history, the status samples, the servers' logs and the final
reads say, as figures. Pure functions of recorded data (``tests/test_nemesis.py``
feeds them synthetic histories).

* **acks with fewer than a majority of copies**: an acked write whose reply's
  ``replicas`` is below ``majority`` (with N servers started and none gone by LEAVE:
  N//2+1).
* **acked writes lost**: an acked write missing, after the final heal, from a
  server's pinned reads (feed, chats, follows read from each server).
* **requests stored twice**: a post or message id, or a post's or message's unique
  text, found twice on one server (final reads, or any read during the run).
* **stale reads**: a read that misses a write acked at least ``STALE_AFTER`` before
  the read was sent: every post for a feed (each feed read shows every post: the
  load keeps them below its limit), the messages of its pair for a chat, the user's
  follows for ``following``.
* **epochs with two coordinators**: an epoch claimed by two servers (their logs'
  ``I am coordinator (epoch E)``, see tests/sync_probe.py); or one whose coordinator
  was, by the logs, coordinator at the same time as another server for longer than
  ``OVERLAP_S`` (a server is coordinator from its claim until it logs ``coordinator
  is now sX``, claims again or says it steps down (``stepping down: …``), or its incarnation's last line; less the time it was paused); or a time in which two servers each said, in fresh status rows while
  serving, that they are the coordinator, for longer than ``OVERLAP_S`` (a
  handover shows both for a moment: messages and heartbeats are in flight).
  Counted once per epoch (the newer one of an overlap).
* **clock spread after each round**: for each Berkeley round seen in the status rows
  (``last_sync`` changes), max - min of ``clock_skew_ms`` (each clock minus the host
  clock, which all share) of the serving servers right after it: the rows that show
  its corrections, and each other server's first row after it (a dead or paused
  server sends none, and is left out).
* **replies naming a copy that is not kept**: an acked post or message whose reply
  named a copy (its ``lamport``, and its ``timestamp`` where both are known) other
  than the copy a server returns for that id in its final pinned reads. A retry that
  reached two servers makes two copies of one request; the latest try's is kept
  (``protocol.copy_key``) and its reply is the one the user hears, so the two must
  agree ("told L=3168 on server 1, but L=2800 on server 3 is stored", issue 13).
  A write missing on a server is not counted here: it is lost.
* **new epochs (elections won)**: the distinct epochs first claimed (``I am
  coordinator (epoch E)`` in a server's log) after the cluster first agreed on a
  coordinator; a fault's column counts those first claimed in its window, from its
  injection to the next fault's (so its hold, its heal and the settling after it).
  A coordinator announcing itself again keeps its epoch and is not counted. The
  bound is "at most one election per real coordinator failure" (issue 13), plus the
  takeover back when the failed coordinator, the highest id, returns (bully):

  ======================  =====  =================================================
  fault                   at     why
                          most
  ======================  =====  =================================================
  isolate, kill-wipe,     0      a follower fails: the coordinator keeps a majority
  clock                          and has no reason to change
  loss                    0      nothing failed: lost heartbeats must not churn
  kill, pause             2      the coordinator fails: one successor, then the
                                 takeover back when it returns
  bus-cut, broker-cut     2      the coordinator loses the bus (its majority) and
                                 steps down: as above
  ======================  =====  =================================================

  Over the whole run the bound is the sum over the faults that ran.
* **retried writes** (reported, no bound): acked writes whose request was sent
  more than once (``tries`` > 1, the last try with ``attempt`` = tries - 1), so a
  reader sees that the kept-copy rule was exercised; and of them, those whose retry
  reached a server already holding an earlier try's copy made by *another* server
  (its log: ``retry of R (try 2): held as 2:80 from try 1; this try's copy replaces
  it`` on server 1): two copies on two origins, the case the rule is for. A lower
  bound: an earlier copy still stranded on a cut-off server is seen by nobody yet.
"""
from __future__ import annotations

import bisect
import re
from collections import Counter, defaultdict
from itertools import combinations
from dataclasses import dataclass, field
from datetime import datetime, timezone

from common import log_lines as LL

STALE_AFTER = 0.5
"""A read must show every write acked this many seconds before it was sent."""
OVERLAP_S = 1.0
"""Two serving self-declared coordinators for longer than this count (see above)."""
ROUND_GAP = 0.3
"""Corrections this close together belong to one Berkeley round."""
WRITE_OPS = ("post", "dm", "follow")
READ_LIMIT = 1000

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


@dataclass(frozen=True)
class Row:
    seen: float
    data: dict


EPOCH_LIMITS = {"isolate": 0, "kill-wipe": 0, "clock": 0, "loss": 0,
                "kill": 2, "pause": 2, "bus-cut": 2, "broker-cut": 2}
"""New epochs a fault's window may show (see above); a fault not named here, 0."""


@dataclass
class Holdings:
    """What one server returned, pinned, at the end."""
    posts: list[dict]                       # {"id", "text", "lamport", "ts"}
    chats: dict[tuple[str, str], list[dict]]
    following: dict[str, list[str]]


@dataclass
class Findings:
    acked: list[dict] = field(default_factory=list)
    minority: list[dict] = field(default_factory=list)
    lost: list[dict] = field(default_factory=list)          # {"id", "op", "missing_on"}
    twice: list[dict] = field(default_factory=list)         # {"what", "server"|"read", "t"}
    stale: list[dict] = field(default_factory=list)         # {"rid", "op", "missing", "t"}
    split: list[dict] = field(default_factory=list)         # {"epoch", "servers", "t", "how"}
    rounds: list[dict] = field(default_factory=list)        # {"t", "spread_ms", "skews"}
    wrong_copy: list[dict] = field(default_factory=list)    # {"id", "acked", "told", "kept"}
    epochs: list[dict] = field(default_factory=list)        # {"epoch", "server", "t"}
    retried: list[dict] = field(default_factory=list)       # acked writes, tries > 1
    crossed: list[dict] = field(default_factory=list)       # {"rid", "server", "origin", "t"}
    unchecked_reads: int = 0


# --- parsing -------------------------------------------------------------------------------
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


# --- the checks ------------------------------------------------------------------------------
def acked_writes(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("op") in WRITE_OPS and r.get("ok")]


def minority_acks(acked: list[dict], majority: int) -> list[dict]:
    return [w for w in acked if (w.get("replicas") or 0) < majority]


def lost_writes(acked: list[dict], holdings: dict[int, Holdings]) -> list[dict]:
    """Acked writes missing from at least one server's final reads."""
    lost = []
    held = {sid: _held(h) for sid, h in holdings.items()}
    for w in acked:
        missing = [sid for sid, (posts, dms, follows) in sorted(held.items())
                   if not _holds(w, posts, dms, follows)]
        if missing:
            lost.append({"id": w.get("id"), "op": w["op"], "user": w["user"],
                         "acked": w["replied"], "missing_on": missing})
    return lost


def _held(h: Holdings):
    posts = {p["id"] for p in h.posts}
    dms = {m["id"] for chat in h.chats.values() for m in chat}
    follows = {(u, t) for u, names in h.following.items() for t in names}
    return posts, dms, follows


def _holds(w: dict, posts, dms, follows) -> bool:
    if w["op"] == "post":
        return w["id"] in posts
    if w["op"] == "dm":
        return w["id"] in dms
    return (w["user"], w["target"]) in follows


def wrong_copies(acked: list[dict], holdings: dict[int, Holdings]) -> list[dict]:
    """Acked posts and messages whose reply named a copy other than the one a server
    holds at the end: another Lamport stamp, or another timestamp where both are
    known. One entry per write, with what each server holds."""
    held = {sid: {i["id"]: i for i in [*h.posts, *(m for chat in h.chats.values() for m in chat)]}
            for sid, h in holdings.items()}
    found = []
    for w in acked:
        if w["op"] not in ("post", "dm") or w.get("lamport") is None:
            continue
        kept = {sid: items[w["id"]] for sid, items in sorted(held.items()) if w["id"] in items}
        wrong = {sid: {"lamport": i.get("lamport"), "ts": i.get("ts")} for sid, i in kept.items()
                 if i.get("lamport") != w["lamport"]
                 or (w.get("ts") is not None and i.get("ts") is not None and i["ts"] != w["ts"])}
        if wrong:
            found.append({"id": w["id"], "op": w["op"], "user": w["user"], "acked": w["replied"],
                          "tries": w.get("tries"),
                          "told": {"server": w.get("server"), "lamport": w["lamport"],
                                   "ts": w.get("ts")},
                          "kept": wrong})
    return found


def new_epochs(claims: list[Claim], since: float) -> list[dict]:
    """The distinct epochs first claimed at or after ``since``, each with its claimer
    and the time of its first claim, in time order."""
    first: dict[int, Claim] = {}
    for c in sorted(claims, key=lambda c: c.t):
        first.setdefault(c.epoch, c)
    return [{"epoch": c.epoch, "server": c.server, "t": c.t}
            for c in sorted(first.values(), key=lambda c: c.t) if c.t >= since]


def crossed_retries(server: int, text: str) -> list[dict]:
    """The retries ``server`` took while holding an earlier try's copy made by another
    server (its log's ``retry of R (try N): held as O:S from try M``, O not itself)."""
    return [{"rid": m.group(2), "server": server, "origin": int(m.group(3)),
             "t": log_time(m.group(1))}
            for m in RETRY.finditer(text) if int(m.group(3)) != server]


def retried_writes(acked: list[dict]) -> list[dict]:
    """Acked writes the client sent more than once (same rid, a higher attempt)."""
    return [w for w in acked if (w.get("tries") or 1) > 1]


def stored_twice(records: list[dict], holdings: dict[int, Holdings]) -> list[dict]:
    """Requests held twice by one server (one id twice, or one unique text under two
    ids, in its final reads), or returned twice by one read during the run; one entry
    per request (named by its text where known)."""
    text_of, sent = {}, {}
    for r in records:
        if r.get("op") in ("post", "dm") and "sent" in r:
            sent[r["text"]] = r["sent"]
            if r.get("id"):
                text_of[r["id"]] = r["text"]
    for h in holdings.values():
        for item in [*h.posts, *(m for chat in h.chats.values() for m in chat)]:
            text_of.setdefault(item["id"], item["text"])
    found: dict[str, dict] = {}

    def add(key: str, **where) -> None:
        found.setdefault(key, {"what": key, "t": sent.get(key), **where})
    for sid, h in sorted(holdings.items()):
        items = [*h.posts, *(m for chat in h.chats.values() for m in chat)]
        for what, count in Counter(i["id"] for i in items).items():
            if count > 1:
                add(text_of.get(what, what), server=sid, copies=count)
        for what, count in Counter(i["text"] for i in items).items():
            if count > 1:
                add(what, server=sid, copies=count)
    for r in records:
        if r.get("ok") and r.get("seen") and r["op"] in ("feed", "chat"):
            for what, count in Counter(r["seen"]).items():
                if count > 1:
                    add(text_of.get(what, what), read=r["rid"], copies=count)
    return list(found.values())


def stale_reads(records: list[dict], after: float = STALE_AFTER) -> tuple[list[dict], int]:
    """Reads missing a write acked ``after`` seconds or more before they were sent; and
    how many reads could not be checked (a feed or chat as long as the read limit)."""
    acked = sorted(acked_writes(records), key=lambda w: w["replied"])
    posts = [w for w in acked if w["op"] == "post"]
    dms = defaultdict(list)
    follows = defaultdict(list)
    for w in acked:
        if w["op"] == "dm":
            dms[frozenset((w["user"], w["to"]))].append(w)
        elif w["op"] == "follow":
            follows[w["user"]].append(w)
    stale, unchecked = [], 0
    for r in records:
        if not r.get("ok") or r.get("op") not in ("feed", "chat", "following"):
            continue
        seen = set(r.get("seen") or ())
        if r["op"] in ("feed", "chat") and len(r["seen"]) >= READ_LIMIT:
            unchecked += 1          # a full page: what is missing may just be past it
            continue
        if r["op"] == "feed":
            due, key = posts, lambda w: w["id"]
        elif r["op"] == "chat":
            due, key = dms[frozenset((r["user"], r["with"]))], lambda w: w["id"]
        else:
            due, key = follows[r["user"]], lambda w: w["target"]
        cut = bisect.bisect_right([w["replied"] for w in due], r["sent"] - after)
        missing = [key(w) for w in due[:cut] if key(w) not in seen]
        if missing:
            stale.append({"rid": r["rid"], "op": r["op"], "user": r["user"], "t": r["sent"],
                          "server": r.get("server"), "pinned": r.get("pinned"),
                          "missing": len(set(missing))})
    return stale, unchecked


def two_coordinators(claims: list[Claim], spans: list[Span], samples: list[dict],
                     fresh_s: float, overlap_s: float = OVERLAP_S) -> list[dict]:
    """Epochs claimed by two servers; epochs whose coordinator's span overlaps another
    server's for longer than ``overlap_s`` (the newer epoch counts); times two serving
    servers both said they were coordinator in fresh status rows (see the module's
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


# --- all of it ---------------------------------------------------------------------------------
def check(records: list[dict], holdings: dict[int, Holdings], majority: int,
          claims: list[Claim], spans: list[Span], samples: list[dict],
          rows: dict[int, list[Row]], fresh_s: float, since: float,
          crossed: list[dict] = ()) -> Findings:
    """Every check; ``since`` is when the cluster first agreed on a coordinator (the
    epochs of its start are not counted); ``crossed``, the servers' ``crossed_retries``."""
    f = Findings()
    f.acked = acked_writes(records)
    f.minority = minority_acks(f.acked, majority)
    f.lost = lost_writes(f.acked, holdings)
    f.twice = stored_twice(records, holdings)
    f.stale, f.unchecked_reads = stale_reads(records)
    f.split = two_coordinators(claims, spans, samples, fresh_s)
    f.rounds = clock_rounds(rows, fresh_s)
    f.wrong_copy = wrong_copies(f.acked, holdings)
    f.epochs = new_epochs(claims, since)
    f.retried = retried_writes(f.acked)
    f.crossed = list(crossed)
    return f


@dataclass(frozen=True)
class Window:
    """The part of the run one fault owns: from its injection to the next one's."""
    label: str
    start: float
    end: float


def figures(f: Findings, window: Window | None = None) -> dict:
    """The table's figures, over the whole run or over one fault's window."""
    def inside(t) -> bool:          # overall, everything counts (a time or not)
        return window is None or (t is not None and window.start <= t < window.end)
    spreads = [r["spread_ms"] for r in f.rounds if inside(r["t"])]
    return {
        "writes_acknowledged": sum(inside(w["replied"]) for w in f.acked),
        "minority_acks": sum(inside(w["replied"]) for w in f.minority),
        "acked_writes_lost": sum(inside(w["acked"]) for w in f.lost),
        "requests_stored_twice": sum(inside(d["t"]) for d in f.twice),
        "stale_reads": sum(inside(s["t"]) for s in f.stale),
        "epochs_with_two_coordinators": sum(inside(s["t"]) for s in f.split),
        "clock_spread_after_round_ms": max(spreads) if spreads else None,
        "rounds_measured": len(spreads),
        "replies_naming_a_copy_not_kept": sum(inside(w["acked"]) for w in f.wrong_copy),
        "new_epochs": sum(inside(e["t"]) for e in f.epochs),
        "retried_writes": sum(inside(w["replied"]) for w in f.retried),
        "retries_onto_another_servers_copy": len({c["rid"] for c in f.crossed if inside(c["t"])}),
    }


MUST_BE = {
    "minority_acks": ("0", lambda v: v == 0),
    "acked_writes_lost": ("0", lambda v: v == 0),
    "requests_stored_twice": ("0", lambda v: v == 0),
    "stale_reads": ("0", lambda v: v == 0),
    "epochs_with_two_coordinators": ("0", lambda v: v == 0),
    "clock_spread_after_round_ms": ("<= 5 ms", lambda v: v is not None and v <= 5.0),
    "replies_naming_a_copy_not_kept": ("0", lambda v: v == 0),
}


def epoch_limit(labels) -> int:
    """The most new epochs the faults ``labels`` may show between them."""
    return sum(EPOCH_LIMITS.get(label, 0) for label in labels)


def failed(figs: dict, labels=()) -> list[str]:
    """The must-be figures that do not hold (a spread with no round measured fails);
    ``new_epochs`` against the bound of the faults ``labels`` the figures cover."""
    found = [name for name, (_, ok) in MUST_BE.items() if not ok(figs[name])]
    if figs["new_epochs"] > epoch_limit(labels):
        found.append("new_epochs")
    return found
