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

Where: the checks on the users' writes and reads are ``write_checks.py``, those on
the coordinators and the clocks ``coordinator_checks.py``, and what the servers'
logs say (claims, spans, crossed retries) ``server_logs.py``; this module runs them
all (``check``), makes the figures, over the run or over one fault's window, and
says which of them fail. The checks' names can be imported from here too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from clients.nemesis.coordinator_checks import (  # noqa: F401 - the checker's names, here too
    OVERLAP_S, ROUND_GAP, Row, clock_rounds, new_epochs, two_coordinators)
from clients.nemesis.server_logs import (  # noqa: F401
    Claim, Span, claims_in_log, coordinator_spans, crossed_retries, log_time)
from clients.nemesis.write_checks import (  # noqa: F401
    READ_LIMIT, STALE_AFTER, WRITE_OPS, Holdings, acked_writes, lost_writes, minority_acks,
    retried_writes, stale_reads, stored_twice, wrong_copies)

EPOCH_LIMITS = {"isolate": 0, "kill-wipe": 0, "clock": 0, "loss": 0,
                "kill": 2, "pause": 2, "bus-cut": 2, "broker-cut": 2}
"""New epochs a fault's window may show (see above); a fault not named here, 0."""


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
