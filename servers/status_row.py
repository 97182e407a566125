"""A server's status row: what ``status`` shows of it, and what its heartbeats carry.

The row (``protocol.ServerStatus``) is read from the roles as they are at that
moment: the phase and ``waiting`` (``Membership``), the events, digest and vector
held durably (``Replication.durable_vv``: what BEAT sends), the election and the
clock (``Bully``, ``BerkeleySync``), the copies still missing and the replication
lag, the live peers, the repairs, the members and whom a majority reaches
(``Quorum``), the address the peers dial (``PeerLinks``). Two figures are the
row's own: ``durability`` (``DURABILITY`` says what it means, for the start-up
line) and ``batched``, how many of my own new events each loop turn made into one
EVENT (``BatchSizes``, counted by the server's ``after_batch``).

It holds no reference to the server: it is given the roles it reads; the two
made after it (``Membership``, which asks for the row, and ``PeerLinks``) are
given to it later (``listen``).
"""
from __future__ import annotations

from common import protocol as P
from common.clock import PhysicalClock

DURABILITY = {
    "flush": "durability flush: a write counts as held here once my log has flushed it to "
             "the OS, not fsynced (a power loss of the host may drop roughly the last 30 s "
             "of acked writes; --fsync for more)",
    "fsync": "durability fsync: a write counts as held here once my log has fsynced it "
             "(one fsync per loop turn)"}
"""What a copy held here means, for the start-up line (``durability`` in ``status``)."""


class BatchSizes:
    """How many of my own new events each loop turn made into one EVENT (and one log
    flush, one fsync in fsync mode, one ACK round): ``status`` shows it, the benchmark
    reads it."""

    def __init__(self) -> None:
        self.turns = 0
        self.events = 0
        self.largest = 0

    def count(self, events: int) -> None:
        self.turns += 1
        self.events += events
        self.largest = max(self.largest, events)

    def figures(self) -> list[int]:
        """``[turns, events, largest]``: the mean batch is events / turns."""
        return [self.turns, self.events, self.largest]


class StatusRow:
    """One server's status row, read from its roles."""

    def __init__(self, server_id: int, fsync: bool, state, lamport, clock: PhysicalClock,
                 repl, lag, peers, quorum, election, berkeley, repair,
                 batches: BatchSizes) -> None:
        self.id = server_id
        self.durability = "fsync" if fsync else "flush"
        self.state = state
        self.lamport = lamport
        self.clock = clock
        self.repl = repl
        self.lag = lag
        self.peers = peers
        self.quorum = quorum
        self.election = election
        self.berkeley = berkeley
        self.repair = repair
        self.batches = batches
        self.membership = self.links = None

    def listen(self, membership, links) -> None:
        """The roles made after the row (``Membership`` asks for it)."""
        self.membership = membership
        self.links = links

    def status(self, now: float) -> P.ServerStatus:
        vv, sums = self.repl.durable_vv()      # BEAT sends these: what I hold durably
        return P.ServerStatus(
            id=self.id, phase=self.membership.phase, events=self.state.count,
            digest=self.state.digest(), lamport=self.lamport.value, vv=vv,
            coordinator=self.election.coordinator, epoch=self.election.epoch,
            clock_offset_ms=self.berkeley.offset_ms,
            clock_skew_ms=round(self.clock.skew() * 1000, 3),
            last_sync=self.berkeley.last_sync,
            under_replicated=self.repl.under_replicated(now),
            repl_lag_hist=self.lag.hist.counts,
            peers=sorted(p.id for p in self.peers.live(now)),
            waiting=self.membership.waiting, repairs=self.repair.repaired,
            sums=sums, durability=self.durability, address=self.links.address,
            members=sorted(self.quorum.members), reachable=self.quorum.reachable(now),
            batched=self.batches.figures())
