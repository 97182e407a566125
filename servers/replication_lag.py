"""Replication lag, measured where it is known: at the origin of each write.

The origin answers a write once ``replicas`` servers hold it; the others get it
moments later. Their ACKs come back to the origin, so the origin sees when each
of its writes is held by every live server, and counts the time since the
answer in a histogram (``common.histogram``) that its status row carries.
"""
from __future__ import annotations

from collections import deque

from common.histogram import Histogram

PENDING_LIMIT = 100_000
"""Answered writes followed at most; beyond, the oldest are no longer measured."""


class ReplicationLag:
    def __init__(self, my_id: int) -> None:
        self.my_id = my_id
        self.pending: deque[tuple[int, float]] = deque(maxlen=PENDING_LIMIT)  # (seq, answered at)
        self.last_seq = 0
        self.hist = Histogram()

    def answered(self, event, now: float) -> None:
        """A write of mine was answered (a retry's second answer is not a new write)."""
        if event.origin == self.my_id and event.seq > self.last_seq:
            self.last_seq = event.seq
            self.pending.append((event.seq, now))

    def update(self, state, peers, now: float) -> None:
        """Once per loop turn: count what every live server now holds."""
        if self.pending:
            self.held_everywhere(min([state.seq_of(self.my_id)] +
                                     [p.vv.get(self.my_id, 0) for p in peers.live(now)]), now)

    def held_everywhere(self, seq: int, now: float) -> None:
        """Every live server now holds my events up to ``seq``."""
        while self.pending and self.pending[0][0] <= seq:
            _, answered_at = self.pending.popleft()
            self.hist.record((now - answered_at) * 1000)
