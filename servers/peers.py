"""What a server knows of the other servers: liveness, phase and holdings.

Any bus message from a peer counts as proof of life (the ZeroMQ Guide's
Paranoid Pirate rule). A peer's version vector, carried by its EVENT, ACK and
BEAT messages, says which events it holds durably: ``vv[origin] >= seq`` means
it holds event ``(origin, seq)``. The vector only grows (``update_vv``: an ACK,
sent point to point, may overtake a BEAT), except when the peer says it is
joining: a restart may have lost its folder (``reset_vv``).

Beside each vector comes the peer's fingerprint of every origin's events
(``protocol.Fingerprints``). A peer's claim to hold *my* events up to seq n
counts only if ``vouch(n, its fingerprint)`` says so: the server checks it is
the fingerprint of the events it numbered 1..n. A peer holding a forged or
damaged copy of one of my events does not count as a copy of it, so no write is
acknowledged on the strength of a copy that is not the write. Such a claim is
kept in ``disputed`` for the log.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

SERVING = "serving"
JOINING = "joining"
SYNCING = "syncing"
LEAVING = "leaving"
HALTED = "halted"
"""Cannot write its folder: out of the pool, holding nothing for anyone (``disk_watch.py``)."""
GONE = "gone"


@dataclass
class Peer:
    id: int
    expiry: float                      # monotonic: alive while now < expiry
    phase: str = JOINING
    vv: dict[int, int] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    heard: float = 0.0                 # monotonic: last message (0: never, or it said BYE)

    def alive(self, now: float) -> bool:
        return self.phase not in (GONE, LEAVING, HALTED) and now < self.expiry

    def holds(self, origin: int, seq: int) -> bool:
        return self.vv.get(origin, 0) >= seq


class Peers:
    def __init__(self, my_id: int, timeout: float,
                 vouch: Callable[[int, int | None], bool] | None = None) -> None:
        self.my_id = my_id
        self.timeout = timeout
        self.vouch = vouch                 # (seq, fingerprint) claimed of my events: true?
        self.table: dict[int, Peer] = {}
        self.disputed: dict[int, int] = {}   # peer -> the seq of mine it claims, unmatched

    def saw(self, peer_id: int, now: float) -> tuple[Peer, bool]:
        """Record life; returns the peer and whether it is new or back from the dead."""
        peer = self.table.get(peer_id)
        if peer is None:
            peer = self.table[peer_id] = Peer(peer_id, now + self.timeout, heard=now)
            return peer, True
        peer.heard = now
        # a leaver (or a halted peer) still talking is leaving (halted) still
        back = not peer.alive(now) and peer.phase not in (LEAVING, HALTED)
        peer.expiry = now + self.timeout
        if back and peer.phase == GONE:
            peer.phase = JOINING
        return peer, back

    def update_vv(self, peer_id: int, vv: dict[int, int], sums: dict[int, int]) -> None:
        """Version vectors only grow: a stale or reordered report never lowers one."""
        peer = self.table.get(peer_id)
        if peer is None:
            return
        for origin, seq in vv.items():
            if seq > peer.vv.get(origin, 0) and self._matches(peer_id, origin, seq, sums):
                peer.vv[origin] = seq

    def reset_vv(self, peer_id: int, vv: dict[int, int], sums: dict[int, int]) -> None:
        """A (re)starting peer may hold less than before (lost folder): believe it,
        but for my events only as far as its copies are mine."""
        peer = self.table.get(peer_id)
        if peer is not None:
            peer.vv = {o: s for o, s in vv.items() if self._matches(peer_id, o, s, sums)}

    def _matches(self, peer_id: int, origin: int, seq: int, sums: dict[int, int]) -> bool:
        if origin != self.my_id or self.vouch is None:
            return True
        if self.vouch(seq, sums.get(origin)):
            self.disputed.pop(peer_id, None)
            return True
        self.disputed[peer_id] = seq
        return False

    def take_disputed(self) -> dict[int, int]:
        """Claims on my events refused since the last call: peer -> seq claimed."""
        out, self.disputed = self.disputed, {}
        return out

    def left(self, peer_id: int) -> None:
        peer = self.table.get(peer_id)
        if peer is not None:
            peer.phase = GONE
            peer.expiry = 0.0
            peer.heard = 0.0

    def live(self, now: float) -> list[Peer]:
        return [p for p in self.table.values() if p.alive(now)]

    def serving(self, now: float) -> list[Peer]:
        return [p for p in self.live(now) if p.phase == SERVING]

    def holding(self, now: float) -> list[Peer]:
        """Live peers that hold, or are catching up to hold, every event."""
        return [p for p in self.live(now) if p.phase in (SERVING, SYNCING)]

    def holders(self, origin: int, seq: int, now: float) -> int:
        """Live peers (any phase) that hold event (origin, seq) durably."""
        return sum(1 for p in self.live(now) if p.holds(origin, seq))

    def hold(self, now: float) -> None:
        """We cannot hear anyone (the bus is down): keep every known peer alive."""
        for peer in self.table.values():
            if peer.phase != GONE:
                peer.expiry = max(peer.expiry, now + self.timeout)

    def expire(self, now: float) -> list[Peer]:
        """Mark silent peers gone; returns the ones that just went."""
        gone = []
        for peer in self.table.values():
            if peer.phase != GONE and now >= peer.expiry:
                peer.phase = GONE
                gone.append(peer)
        return gone
