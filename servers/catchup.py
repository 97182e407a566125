"""Catch-up: what a server lacks, and from whom to pull it.

PUB/SUB drops messages when a queue fills, and a server that was away missed
what was said meanwhile. Two signs tell what is missing:

* a **gap**: an event arrives whose predecessor never came. It waits here
  (``park``) until the missing ones are pulled, and the pull goes out at once;
* a **peer ahead**: a live peer's version vector holds more of an origin than
  mine for ``gap_grace`` seconds (its EVENT may just be in flight).

Each origin is pulled from one peer only (the origin itself when it can), so a
catch-up receives each missing event once; one pull per peer is outstanding at a
time, re-sent after ``fetch_timeout``. A joining server pulls toward a *target*
(the most any live peer holds of each origin: the Clone pattern's snapshot
point) before it serves.

Pure logic: no sockets, no clock reads; ``now`` is ``time.monotonic()``.
"""
from __future__ import annotations

from collections import Counter

from common import protocol as P
from servers.peers import Peers
from servers.state import SocialState


class CatchUp:
    def __init__(self, state: SocialState, peers: Peers, gap_grace: float,
                 fetch_timeout: float) -> None:
        self.state = state
        self.peers = peers
        self.gap_grace = gap_grace
        self.fetch_timeout = fetch_timeout
        self.early: dict[int, dict[int, P.Event]] = {}   # origin -> seq -> event
        self.lag_since: dict[int, float] = {}            # origin -> when I saw I lag
        self.fetching: dict[int, float] = {}             # peer -> deadline of its pull
        self.gaps_repaired = 0
        self.pulled: Counter = Counter()                 # peer -> new events its pulls gave

    # --- gaps -------------------------------------------------------------------
    def park(self, event: P.Event) -> None:
        """An event beyond the next one of its origin: keep it, pull the gap now."""
        self.early.setdefault(event.origin, {})[event.seq] = event
        self.lag_since[event.origin] = 0.0

    def next_parked(self, origin: int) -> P.Event | None:
        """The parked event that now comes next for ``origin``, if any."""
        waiting = self.early.get(origin)
        if not waiting:
            return None
        event = waiting.pop(self.state.seq_of(origin) + 1, None)
        if not waiting:
            del self.early[origin]
        if event is not None:
            self.gaps_repaired += 1
        return event

    # --- pulls --------------------------------------------------------------------
    def due(self, now: float, eager: bool = False) -> dict[int, dict[int, int]]:
        """Pulls to send now: ``{peer: {origin: seq I hold}}``; ``eager`` (a syncing
        server) skips the grace."""
        mine = self.state.vv()
        ahead = self.ahead(mine, now)
        due: dict[int, dict[int, int]] = {}
        for origin, best_peer in ahead.items():
            since = self.lag_since.setdefault(origin, now)
            if eager or since == 0.0 or now - since >= self.gap_grace:
                due.setdefault(best_peer, {})[origin] = mine.get(origin, 0)
        for origin in list(self.lag_since):
            if origin not in ahead and origin not in self.early:
                del self.lag_since[origin]
        for peer_id in list(due):
            if self.fetching.get(peer_id, 0.0) > now:
                del due[peer_id]            # one pull per peer at a time
            else:
                self.fetching[peer_id] = now + self.fetch_timeout
        return due

    def ahead(self, mine: dict[int, int], now: float) -> dict[int, int]:
        """origin -> a live peer holding more of it than I do: the origin itself
        whenever it is ahead of me, else the peer holding most."""
        ahead: dict[int, int] = {}
        for peer in self.peers.live(now):
            for origin, seq in peer.vv.items():
                if seq > mine.get(origin, 0):
                    best = ahead.get(origin)
                    if best is None or best != origin and (
                            peer.id == origin or self.peers.table[best].vv.get(origin, 0) < seq):
                        ahead[origin] = peer.id
        return ahead

    def answered(self, peer_id: int, more: bool, now: float, new: int = 0) -> None:
        """A peer's EVENTS came, with ``new`` events I lacked: the pull is done, or
        (``more``) goes on at once."""
        self.pulled[peer_id] += new
        if more:
            self.fetching[peer_id] = now + self.fetch_timeout
        else:
            self.fetching.pop(peer_id, None)

    def take_pulled(self) -> Counter:
        """The new events each peer's pulls gave since the last call."""
        pulled, self.pulled = self.pulled, Counter()
        return pulled

    def forget(self, peer_id: int) -> None:
        """A peer is gone: its outstanding pull will never be answered."""
        self.fetching.pop(peer_id, None)

    # --- joining -------------------------------------------------------------------
    def target(self, now: float) -> dict[int, int]:
        """What a joining server must hold before it serves: the most any live
        peer holds of each origin."""
        target = self.state.vv()
        for peer in self.peers.live(now):
            for origin, seq in peer.vv.items():
                target[origin] = max(target.get(origin, 0), seq)
        return target

    def lower_unreachable(self, target: dict[int, int], now: float,
                          floor: dict[int, int] | None = None) -> None:
        """If every live holder of an origin's tail is gone, stop waiting for it --
        but never below ``floor`` (my own events I know I issued: they must come back)."""
        live = self.peers.live(now)
        floor = floor or {}
        for origin, seq in target.items():
            best = max([self.state.seq_of(origin), floor.get(origin, 0)]
                       + [p.vv.get(origin, 0) for p in live])
            if best < seq:
                target[origin] = best

    def held(self, origin: int) -> int:
        """The highest seq of ``origin`` I hold."""
        return self.state.seq_of(origin)

    def reachable(self, origin: int, now: float) -> bool:
        """A live peer holds more of ``origin`` than I do."""
        mine = self.state.seq_of(origin)
        return any(p.vv.get(origin, 0) > mine for p in self.peers.live(now))

    def serving_peer(self, now: float) -> tuple[int, dict[int, int]] | None:
        """A live serving peer (the lowest id) and what it holds now, or None."""
        serving = sorted(self.peers.serving(now), key=lambda p: p.id)
        return (serving[0].id, dict(serving[0].vv)) if serving else None

    def caught_up(self, target: dict[int, int]) -> bool:
        mine = self.state.vv()
        return all(mine.get(o, 0) >= seq for o, seq in target.items())
