"""Replication: every event on every server, in seq order, and its copies counted.

Each event is ``(origin, seq)``. A server applies the events of each origin
strictly in seq order; one that arrives early is parked with the catch-up role
(``catchup.py``), which pulls what is missing. Events a server makes itself go
into the *outbox*; once per loop turn the server makes the turn's events durable,
publishes the outbox as one EVENT (carrying its version vector: the ACK of every
peer event it applied that turn rides along), or, with only peers' events new,
ACKs them straight to their origins.

The quorum rule: a write is acknowledged when ``copies_required`` servers hold
it durably, counted from the version vectors peers send in EVENT, ACK and BEAT.

Pure logic: no sockets, no clock reads; ``now`` is ``time.monotonic()``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from common import protocol as P
from common.log import ProcessLog, event_brief, vv_brief
from servers.catchup import CatchUp
from servers.peers import Peers
from servers.state import SocialState
from servers.store import EventStore


def copies_required(replicas: int, holding_peers: int, majority: int = 1) -> int:
    """Copies to wait for: ``replicas``, or every server that is serving or catching
    up to serve (me included) when fewer are alive -- but never fewer than a
    ``majority`` of the members (``servers/quorum.py``), so that any two acknowledged
    writes share a server, and a server cut off from the rest acknowledges nothing.
    A syncing server counts: it will hold the write as soon as it has caught up, and
    counting only serving ones would ack with too few copies in the moment two become
    serving together."""
    return max(majority, min(replicas, 1 + holding_peers))


@dataclass
class Waiter:
    """A client waiting for its write to reach enough servers."""
    route: bytes
    rid: str
    event_id: str
    origin: int
    seq: int
    since: float


class Replication:
    def __init__(self, my_id: int, state: SocialState, store: EventStore, peers: Peers,
                 catchup: CatchUp, replicas: int, log: ProcessLog | None = None, *,
                 serving: Callable[[], bool] = lambda: False,
                 on_conflict: Callable[[P.Event, P.Event], None] | None = None,
                 majority: Callable[[], int] = lambda: 1) -> None:
        self.my_id = my_id
        self.majority = majority          # of the members: the fewest copies of an ack
        self.serving = serving            # while serving, I alone number my events
        self.on_conflict = on_conflict    # (my copy, another copy) of one event
        self.state = state
        self.store = store
        self.peers = peers
        self.catchup = catchup
        self.replicas = replicas
        self.log = log
        self.waiters: list[Waiter] = []
        self.fresh: list[P.Event] = []                # applied this turn, not yet durable
        self.outbox: list[P.Event] = []               # made here this turn, to publish

    # --- receiving ------------------------------------------------------------------
    def load(self, events: list[P.Event]) -> int:
        """Apply events reloaded from disk (any order); returns how many were new."""
        events.sort(key=lambda e: (e.origin, e.seq))
        applied = 0
        for event in events:
            if event.seq == self.state.seq_of(event.origin) + 1:
                self.state.apply(event)
                applied += 1
        return applied

    def receive(self, event: P.Event) -> bool:
        """An event from the bus or a pull; returns True if it was new. A copy that
        differs from the one held goes to ``on_conflict`` (the repair decides which
        stands); an event of my own origin that I never numbered is refused."""
        have = self.state.seq_of(event.origin)
        if event.seq <= have:
            if self.on_conflict is not None:
                held = self.state.copy_at(event.origin, event.seq)
                if held != event:
                    self.on_conflict(held, event)
            return False
        if event.origin == self.my_id and self.serving():
            if self.log is not None:
                self.log.warn(f"refused event {event.origin}:{event.seq} ({event_brief(event)}): "
                              f"it claims to be mine, but "
                              f"I never numbered it (my events go up to seq {have})")
            return False
        if event.seq > have + 1:
            self.catchup.park(event)
            return False
        self._apply(event)
        while (parked := self.catchup.next_parked(event.origin)) is not None:
            self._apply(parked)
        return True

    def _apply(self, event: P.Event) -> None:
        raw = P.dumps(event)             # encoded once: for its hash and its log line
        self.state.apply(event, raw)
        self.store.append(event, raw)
        self.fresh.append(event)

    def replace(self, event: P.Event) -> P.Event:
        """A repair: ``event`` stands in place of my copy of it, durable and ACKed
        like a new event (the new copy goes at the end of the log, so a reload keeps
        it); returns the copy replaced."""
        old = self.state.replace(event)
        self.store.append(event)
        self.fresh.append(event)
        return old

    def on_EVENT(self, msg: P.EventBatch, now: float) -> None:
        """A peer's new writes, and its vector once they are durable (its ACK)."""
        lines = []
        for event in msg.events:
            new = self.receive(event)
            if self.log is not None:
                lines.append(f"EVENT {event_brief(event)}" if new else
                             f"EVENT {event_brief(event)} (held or early)")
        if self.log is not None and lines:
            lines[-1] += f" vv={vv_brief(msg.vv)}"
            self.log.batch("recv", f"server-{msg.sender}", lines)
        self.peers.update_vv(msg.sender, msg.vv, msg.sums)

    def on_ACK(self, msg: P.Ack, now: float) -> None:
        """A peer's vector, sent straight to me as the origin of some of its events."""
        self.peers.update_vv(msg.sender, msg.vv, msg.sums)
        if self.log is not None:
            self.log.recv(f"server-{msg.sender}", f"ACK vv={vv_brief(msg.vv)}")

    def on_EVENTS(self, msg: P.Events, now: float) -> int:
        """A pull's answer: apply what is new; returns how many were."""
        new = sum(1 for e in msg.events if self.receive(e))
        self.peers.update_vv(msg.sender, msg.vv, msg.sums)
        return new

    def durable_vv(self) -> tuple[dict[int, int], dict[int, int]]:
        """My version vector without the events applied this turn (``fresh``: in the
        log's buffer, not yet flushed or fsynced), and the fingerprints that go with
        it: what I may tell a peer I hold, since an origin counts it as a copy of its
        writes. The end of the turn makes them durable, then announces them."""
        vv = self.state.vv()
        if not self.fresh:
            return vv, self.state.sums()
        for event in self.fresh:
            if event.seq - 1 < vv[event.origin]:
                vv[event.origin] = event.seq - 1
        return vv, {o: self.state.sum_at(o, seq) for o, seq in vv.items()}

    def event(self, event_id: str) -> P.Event | None:
        """The event that counts for a request id, if held."""
        return self.state.events.get(event_id)

    # --- writing --------------------------------------------------------------------
    def create(self, kind: str, user: str, data: P.EventData, rid: str, lamport: int,
               ts: float, attempt: int = 0) -> P.Event:
        """A new event originating here, applied, logged and in the outbox (not yet durable)."""
        event = P.Event(id=rid, kind=kind, user=user, lamport=lamport, ts=ts,
                        origin=self.my_id, seq=self.state.next_seq(self.my_id), data=data,
                        attempt=attempt)
        self._apply(event)
        self.outbox.append(event)
        return event

    def take_turn(self) -> tuple[list[P.Event], list[P.Event]]:
        """Once per loop turn: (events applied, events made here), now to be made
        durable and announced; both lists start empty again."""
        fresh, outbox = self.fresh, self.outbox
        self.fresh, self.outbox = [], []
        return fresh, outbox

    # --- acknowledging ------------------------------------------------------------------
    def holders(self, origin: int, seq: int, now: float) -> int:
        mine = 1 if self.state.seq_of(origin) >= seq else 0
        return mine + self.peers.holders(origin, seq, now)

    def required(self, now: float) -> int:
        return copies_required(self.replicas, len(self.peers.holding(now)), self.majority())

    def wait(self, route: bytes, rid: str, event: P.Event, now: float) -> None:
        """A client waits for ``event`` to have its copies."""
        self.waiters.append(Waiter(route, rid, event.id, event.origin, event.seq, now))

    def ready(self, now: float) -> list[tuple[Waiter, int]]:
        """Waiters whose event now has enough holders, with the holder count."""
        if not self.waiters:
            return []
        need = self.required(now)
        vvs = [p.vv for p in self.peers.live(now)]      # once per turn, not per waiter
        done, still = [], []
        for w in self.waiters:
            n = (self.state.seq_of(w.origin) >= w.seq) + sum(
                1 for vv in vvs if vv.get(w.origin, 0) >= w.seq)
            if n >= need:
                done.append((w, n))
            else:
                still.append(w)
        self.waiters = still
        return done

    def take_overdue(self, now: float, wait: float) -> list[tuple[Waiter, int, int]]:
        """Waiters that waited ``wait`` seconds or more, no longer waited for here, with
        the copies their event has and the copies it needs."""
        if not self.waiters or now - self.waiters[0].since < wait:     # oldest first
            return []
        need = self.required(now)
        overdue = [(w, self.holders(w.origin, w.seq, now), need)
                   for w in self.waiters if now - w.since >= wait]
        self.waiters = [w for w in self.waiters if now - w.since < wait]
        return overdue

    def drop_waiters(self) -> list[Waiter]:
        """Every client still waiting for copies, no longer waited for here."""
        waiters, self.waiters = self.waiters, []
        return waiters

    def under_replicated(self, now: float) -> int:
        """Events of my own origin held by fewer than ``replicas`` live servers."""
        mine = self.state.seq_of(self.my_id)
        counts = sorted([mine] + [p.vv.get(self.my_id, 0) for p in self.peers.live(now)],
                        reverse=True)
        if len(counts) < self.replicas:
            return mine
        return max(0, mine - counts[self.replicas - 1])   # peers may hold more (my folder lost)
