"""Replication: every event on every server, gaps repaired, acks counted.

Each event is ``(origin, seq)``. A server applies the events of each origin
strictly in seq order; one that arrives early waits in a buffer while the
missing ones are pulled from a peer (FETCH/EVENTS over request/reply), because
PUB/SUB drops messages when a queue fills. A server also pulls when a peer's
version vector shows events it lacks (the last one of a burst may be the one
dropped). Pulls start from the server's own version vector, so a server that
comes back fetches only what it missed, and a new one fetches everything: the
snapshot of the Clone pattern is the same pull from an empty vector.

A write is acknowledged when ``min(replicas, serving or syncing servers)`` hold
it durably, counted from the version vectors peers publish in ACK and BEAT.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from servers.peers import Peers
from servers.state import SocialState
from servers.store import EventStore

GAP_GRACE = 0.3
"""Seconds a peer may be ahead of us before we pull (its EVENT may be in flight)."""
FETCH_TIMEOUT = 2.0


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
                 replicas: int) -> None:
        self.my_id = my_id
        self.state = state
        self.store = store
        self.peers = peers
        self.replicas = replicas
        self.early: dict[int, dict[int, dict]] = {}   # origin -> seq -> event
        self.lag_since: dict[int, float] = {}
        self.fetching: dict[int, float] = {}          # peer -> deadline of its pull
        self.waiters: list[Waiter] = []
        self.fresh: list[dict] = []                   # applied since the last ACK
        self.gaps_repaired = 0

    # --- receiving ------------------------------------------------------------------
    def load(self, events: list[dict]) -> int:
        """Apply events reloaded from disk (any order); returns how many were new."""
        events.sort(key=lambda e: (e["origin"], e["seq"]))
        applied = 0
        for event in events:
            if event["seq"] == self.state.seq_of(event["origin"]) + 1:
                self.state.apply(event)
                applied += 1
        return applied

    def receive(self, event: dict) -> bool:
        """An event from the bus or a fetch; returns True if it was new."""
        origin, seq = event["origin"], event["seq"]
        have = self.state.seq_of(origin)
        if seq <= have:
            return False
        if seq > have + 1:
            self.early.setdefault(origin, {})[seq] = event
            self.lag_since.setdefault(origin, 0.0)     # a gap is certain: pull now
            return False
        self._apply(event)
        waiting = self.early.get(origin)
        while waiting:
            nxt = waiting.pop(self.state.seq_of(origin) + 1, None)
            if nxt is None:
                break
            self._apply(nxt)
            self.gaps_repaired += 1
        if waiting is not None and not waiting:
            del self.early[origin]
        return True

    def _apply(self, event: dict) -> None:
        self.state.apply(event)
        self.store.append(event)
        self.fresh.append(event)

    def create(self, kind: str, user: str, data: dict, rid: str, lamport: int,
               ts: float) -> dict:
        """A new event originating here, applied and logged (not yet durable)."""
        event = {"id": rid, "kind": kind, "user": user, "lamport": lamport, "ts": ts,
                 "origin": self.my_id, "seq": self.state.next_seq(self.my_id), "data": data}
        self._apply(event)
        return event

    def take_fresh(self) -> list[dict]:
        fresh, self.fresh = self.fresh, []
        return fresh

    # --- pulling what is missing ---------------------------------------------------------
    def fetches_due(self, now: float, eager: bool = False) -> dict[int, list[int]]:
        """Pulls to send now: {peer: origins to pull from it}, from my version vector.

        Each origin is pulled from one peer only (the origin itself when it can),
        so a catch-up receives each missing event once; ``eager`` skips the grace."""
        mine = self.state.vv()
        ahead = self._ahead(mine, now)
        due: dict[int, list[int]] = {}
        for origin, best_peer in ahead.items():
            since = self.lag_since.setdefault(origin, now)
            if eager or since == 0.0 or now - since >= GAP_GRACE:
                due.setdefault(best_peer, []).append(origin)
        for origin in list(self.lag_since):
            if origin not in ahead and origin not in self.early:
                del self.lag_since[origin]
        for peer_id in list(due):
            if self.fetching.get(peer_id, 0.0) > now:
                del due[peer_id]            # one pull per peer at a time
            else:
                self.fetching[peer_id] = now + FETCH_TIMEOUT
        return due

    def _ahead(self, mine: dict[int, int], now: float) -> dict[int, int]:
        """origin -> a live peer holding more of it than I do (the origin itself if it can)."""
        ahead: dict[int, int] = {}
        for peer in self.peers.live(now):
            for origin, seq in peer.vv.items():
                if seq > mine.get(origin, 0):
                    best = ahead.get(origin)
                    if best is None or peer.id == origin or \
                            self.peers.table[best].vv.get(origin, 0) < seq:
                        ahead[origin] = peer.id
        return ahead

    def fetched(self, peer_id: int, events: list[dict]) -> int:
        self.fetching.pop(peer_id, None)
        return sum(1 for e in events if self.receive(e))

    def sync_target(self, now: float) -> dict[int, int]:
        """What a joining server must hold before it serves: the most any live
        peer holds of each origin (the Clone pattern's snapshot point)."""
        target = self.state.vv()
        for peer in self.peers.live(now):
            for origin, seq in peer.vv.items():
                target[origin] = max(target.get(origin, 0), seq)
        return target

    def lower_unreachable(self, target: dict[int, int], now: float) -> None:
        """If every live holder of an origin's tail is gone, stop waiting for it."""
        live = self.peers.live(now)
        for origin, seq in target.items():
            best = max([self.state.seq_of(origin)] + [p.vv.get(origin, 0) for p in live])
            if best < seq:
                target[origin] = best

    def caught_up(self, target: dict[int, int]) -> bool:
        mine = self.state.vv()
        return all(mine.get(o, 0) >= seq for o, seq in target.items())

    # --- acknowledging ------------------------------------------------------------------
    def holders(self, origin: int, seq: int, now: float) -> int:
        mine = 1 if self.state.seq_of(origin) >= seq else 0
        return mine + self.peers.holders(origin, seq, now)

    def required(self, now: float) -> int:
        """Copies to wait for: ``replicas``, or every server that is serving or
        catching up to serve when fewer are alive (a syncing server will hold the
        write as soon as it has caught up; counting only serving ones would ack
        with too few copies in the moment two servers become serving together)."""
        return min(self.replicas, 1 + len(self.peers.holding(now)))

    def wait(self, route: bytes, rid: str, event: dict) -> None:
        self.waiters.append(Waiter(route, rid, event["id"], event["origin"], event["seq"],
                                   time.monotonic()))

    def ready(self, now: float) -> list[tuple[Waiter, int]]:
        """Waiters whose event now has enough holders, with the holder count."""
        if not self.waiters:
            return []
        need = self.required(now)
        done, still = [], []
        for w in self.waiters:
            n = self.holders(w.origin, w.seq, now)
            (done if n >= need else still).append((w, n) if n >= need else w)
        self.waiters = still
        return done

    def under_replicated(self, now: float) -> int:
        """Events of my own origin held by fewer than ``replicas`` live servers."""
        mine = self.state.seq_of(self.my_id)
        counts = sorted([mine] + [p.vv.get(self.my_id, 0) for p in self.peers.live(now)],
                        reverse=True)
        if len(counts) < self.replicas:
            return mine
        return mine - counts[self.replicas - 1]
