"""Anti-entropy: find where my events differ from the peers', and keep the copy that stands.

Divergence is seen two ways:

* every BEAT carries the sender's fingerprint of each origin's events
  (``protocol.Fingerprints``, kept by ``state.py``); equal vectors for an origin
  with different fingerprints mean some event of that origin differs;
* a copy of an event I hold arrives (bus or pull) and differs from mine.

Then a *repair* of that origin runs, as a Merkle descent over seqs ``1..n`` (``n``
the seqs I hold): COMPARE asks every live peer holding ``n`` for the fingerprints
of blocks of seqs, blocks whose fingerprint differs from mine are split again
until they hold at most ``RANGE_MAX`` seqs, and RANGE fetches every peer's copies
of those. For each seq the copy that stands is ``choose``'s:

* the origin's own copy, when the origin answered: it numbered the event, so
  any other copy of that seq is a forgery or a corruption;
* otherwise the copy most servers hold (ties to the smallest encoding, so every
  server that sees the same copies keeps the same one).

Stored copies were checked against their checksums when loaded (``records.py``),
so a flipped byte never votes. I replace only my own copy; each peer repairs
itself the same way, so a forged or corrupt copy is outvoted, never spread. An
origin never replaces its own events (it says once that peers hold other copies:
they will repair theirs). Every replacement is one log line, counted in
``repaired`` (``repairs`` in status).

Pure logic: no sockets, no clock reads. ``send(peer_id, msg)`` asks a peer,
``replace(event)`` puts a copy in place (durably); ``now`` is ``time.monotonic()``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from common import protocol as P
from common.log import ProcessLog, event_brief
from servers.peers import Peers
from servers.state import SocialState

TOLD_MAX = 1000
"""Distinct lines about my own events remembered (each logged once) before forgetting."""
MAX_BLOCKS = 16
"""Differing blocks fetched in one repair; a repair that finds more goes on in the next."""


def choose(origin: int, copies: dict[int, P.Event]) -> tuple[P.Event, list[int]]:
    """The copy of one event that stands, and the servers holding it: the origin's
    if it is among ``copies`` (server id -> copy), else the one most hold, ties to
    the smallest encoding. The same copies give the same answer in any order."""
    if origin in copies:
        winner = copies[origin]
    else:
        encoded = {server: P.dumps(event) for server, event in copies.items()}
        votes = Counter(encoded.values())
        best = min(votes, key=lambda raw: (-votes[raw], raw))
        winner = next(copies[s] for s, raw in encoded.items() if raw == best)
    return winner, sorted(s for s, e in copies.items() if e == winner)


def block_size(lo: int, hi: int) -> int:
    """Blocks of at most ``RANGE_MAX`` seqs, at most ``MAX_SUMS`` of them per COMPARE."""
    return max(P.RANGE_MAX, -(-(hi - lo) // P.MAX_SUMS))


@dataclass
class Session:
    """One repair of one origin's events: the ranges still to look at, the step
    waiting for answers, and the answers."""
    origin: int
    peers: set[int]                          # who takes part (answered every step so far)
    ranges: list[tuple[int, int]]            # (lo, hi] still to compare or fetch
    deadline: float = 0.0
    step: P.Compare | P.CopyRange | None = None
    answers: dict[int, list] = field(default_factory=dict)   # peer -> sums or copies
    fetched: int = 0                         # ranges fetched (at most MAX_BLOCKS)


class Repair:
    def __init__(self, my_id: int, state: SocialState, peers: Peers,
                 log: ProcessLog | None, *, send: Callable[[int, object], None],
                 replace: Callable[[P.Event], P.Event], timeout: float,
                 cooldown: float) -> None:
        self.my_id = my_id
        self.state = state
        self.peers = peers
        self.log = log
        self._send = send
        self._replace = replace
        self.timeout = timeout                 # for each step's answers
        self.cooldown = cooldown               # between two repairs of one origin
        self.sessions: dict[int, Session] = {}
        self.quiet_until: dict[int, float] = {}   # origin -> no new repair before
        self.repaired = 0                      # copies of mine replaced
        self._told_mine: set[str] = set()      # lines said about my events (each said once)

    # --- seeing divergence -----------------------------------------------------------
    def on_BEAT(self, msg: P.Beat, now: float) -> None:
        """Equal vectors with different fingerprints: some event differs."""
        mine = self.state.sums()
        for origin, seq in msg.vv.items():
            if seq and seq == self.state.seq_of(origin) and msg.sums.get(origin) != mine.get(origin):
                self.suspect(origin, f"server-{msg.sender} holds seqs 1..{seq} of server-{origin} "
                                     f"as I do, with another fingerprint", now)

    def on_conflict(self, mine: P.Event, other: P.Event, now: float) -> None:
        """A copy of an event I hold arrived, and it differs from mine."""
        self.suspect(mine.origin, f"a copy of event {mine.origin}:{mine.seq} differs from "
                                  f"mine ({event_brief(other)})", now)

    def suspect(self, origin: int, why: str, now: float) -> None:
        if origin == self.my_id:
            self._tell_mine_stand(why)
            return
        if origin in self.sessions or now < self.quiet_until.get(origin, 0.0):
            return
        upto = self.state.seq_of(origin)
        asked = {p.id for p in self.peers.live(now) if p.vv.get(origin, 0) >= upto}
        if not upto or not asked:
            return
        if self.log is not None:
            self.log.note(f"repair of server-{origin}'s events 1..{upto} with "
                          f"{_names(asked)}: {why}")
        session = self.sessions[origin] = Session(origin, asked, [(0, upto)])
        self._next_step(session, now)

    def _tell_mine_stand(self, why: str) -> None:
        if self.log is not None and why not in self._told_mine:
            if len(self._told_mine) >= TOLD_MAX:     # a long dispute: say its news again
                self._told_mine.clear()
            self._told_mine.add(why)
            self.log.warn(f"{why}: my copies of my own events stand (I numbered them); "
                          f"the peers repair theirs")

    # --- the steps ---------------------------------------------------------------------------
    def _next_step(self, session: Session, now: float) -> None:
        """Ask for the next range: its block fingerprints, or its copies once small."""
        if not session.ranges or not session.peers or session.fetched >= MAX_BLOCKS:
            self._finish(session, now)
            return
        lo, hi = session.ranges.pop()
        if hi - lo <= P.RANGE_MAX:
            session.fetched += 1
            step = P.CopyRange(sender=self.my_id, origin=session.origin, lo=lo, hi=hi)
        else:
            step = P.Compare(sender=self.my_id, origin=session.origin, lo=lo, hi=hi,
                             block=block_size(lo, hi))
        session.step, session.answers = step, {}
        session.deadline = now + self.timeout
        for peer_id in sorted(session.peers):
            self._send(peer_id, step)

    def on_SUMS(self, msg: P.Sums, now: float) -> None:
        session = self._expecting(msg, P.Compare)
        if session is not None and (msg.lo, msg.hi, msg.block) == \
                (session.step.lo, session.step.hi, session.step.block):
            session.answers[msg.sender] = list(msg.sums)
            self._maybe_done(session, now)

    def on_COPIES(self, msg: P.Copies, now: float) -> None:
        session = self._expecting(msg, P.CopyRange)
        if session is None or (msg.lo, msg.hi) != (session.step.lo, session.step.hi):
            return
        seqs = [e.seq for e in msg.events]
        if msg.events and (seqs != list(range(msg.lo + 1, msg.hi + 1))
                           or any(e.origin != msg.origin for e in msg.events)):
            if self.log is not None:
                self.log.warn(f"dropped COPIES from server-{msg.sender}: not the events "
                              f"{msg.origin}:{msg.lo + 1}..{msg.hi} asked for")
            session.answers[msg.sender] = []
        else:
            session.answers[msg.sender] = list(msg.events)
        self._maybe_done(session, now)

    def _expecting(self, msg, kind) -> Session | None:
        session = self.sessions.get(msg.origin)
        if session is None or not isinstance(session.step, kind) or msg.sender not in session.peers:
            return None
        return session

    def _maybe_done(self, session: Session, now: float, timed_out: bool = False) -> None:
        if not timed_out and set(session.answers) != session.peers:
            return
        # a peer that did not answer, or no longer holds the range, leaves the repair
        session.peers = {p for p, answer in session.answers.items() if answer}
        step = session.step
        if isinstance(step, P.Compare):
            self._split(session, step)
        else:
            self._settle(session, step)
        self._next_step(session, now)

    def _split(self, session: Session, step: P.Compare) -> None:
        """The blocks whose fingerprint differs anywhere become ranges to look at."""
        mine = self.state.block_sums(step.origin, step.lo, step.hi, step.block) or []
        differ = sorted({i for p in session.peers for i, s in enumerate(session.answers[p])
                         if i >= len(mine) or s != mine[i]}, reverse=True)
        for i in differ:
            lo = step.lo + i * step.block
            session.ranges.append((lo, min(lo + step.block, step.hi)))

    def _settle(self, session: Session, step: P.CopyRange) -> None:
        """For each seq of the range, the copy that stands replaces mine if it differs."""
        mine = self.state.copies(step.origin, step.lo, step.hi) or []
        for i, my_copy in enumerate(mine):
            copies = {p: session.answers[p][i] for p in session.peers}
            copies[self.my_id] = my_copy
            winner, holders = choose(step.origin, copies)
            if winner == my_copy:
                continue
            self._replace(winner)
            self.repaired += 1
            if self.log is not None:
                why = ("its origin" if step.origin in holders
                       else f"{len(holders)} of {len(copies)} servers")
                self.log.warn(f"repaired event {step.origin}:{my_copy.seq}: kept the copy of "
                              f"{_names(holders)} ({why}): {event_brief(winner)}; mine differed: "
                              f"{event_brief(my_copy)}")

    def _finish(self, session: Session, now: float) -> None:
        del self.sessions[session.origin]
        self.quiet_until[session.origin] = now + self.cooldown
        if session.ranges and self.log is not None:     # more than MAX_BLOCKS differ
            self.log.note(f"repair of server-{session.origin}'s events goes on in the next round")

    def tick(self, now: float) -> None:
        """A step whose answers are late goes on with the answers that came."""
        for session in list(self.sessions.values()):
            if now >= session.deadline:
                self._maybe_done(session, now, timed_out=True)
        for peer_id, seq in self.peers.take_disputed().items():
            self._tell_mine_stand(f"server-{peer_id} claims my events up to seq {seq} with a "
                                  f"fingerprint that is not mine (a copy I never made): "
                                  f"not counted as holding them")

    # --- answering a peer's repair -----------------------------------------------------------
    def answer_COMPARE(self, msg: P.Compare) -> P.Sums:
        sums = self.state.block_sums(msg.origin, msg.lo, msg.hi, msg.block) or []
        return P.Sums(sender=self.my_id, origin=msg.origin, lo=msg.lo, hi=msg.hi,
                      block=msg.block, sums=sums)

    def answer_RANGE(self, msg: P.CopyRange) -> P.Copies:
        events = self.state.copies(msg.origin, msg.lo, msg.hi) or []
        return P.Copies(sender=self.my_id, origin=msg.origin, lo=msg.lo, hi=msg.hi,
                        events=events)


def _names(ids) -> str:
    return ", ".join(f"server-{i}" for i in sorted(ids))
