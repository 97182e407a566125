"""What the Berkeley unit tests (tests/test_berkeley*_unit.py) share: clocks over a
fake bus (``ClockCluster``).

The election is a stub (who coordinates which epoch is the Bully's job, tested
elsewhere). The bus delivers every message to every node, its sender included,
after ``latency`` simulated seconds (plus ``delays[sender]``: a server whose messages
wait for a retransmission); the coordinator ticks every STEP, so a latency above 0
gives round trips in steps of 10 ms. Messages
travel as real frames: encoded with the sender's Lamport stamp and decoded as a
server's SUB socket decodes them (``protocol.BUS``), so every message Berkeley
sends must be valid on the wire.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from common import protocol as P
from common.clock import LamportClock, PhysicalClock
from common.config import Config
from servers.berkeley import BerkeleySync
from tests.fakes import NoteLog


CONFIG = Config().validate()
STEP = 0.01
SLOW_LINKS = dataclasses.replace(CONFIG, berkeley_max_rtt=0.25).validate()
"""Round trips of tens of ms (the simulation's steps) stay under the outright limit."""


@dataclass
class Term:
    """Stands in for Bully: what BerkeleySync reads from the election."""
    is_coordinator: bool = False
    epoch: int = 101
    coordinator: int | None = 1
    max_epoch: int = 0                  # the highest heard of (Bully.max_epoch)


class SimulatedClock:
    """A PhysicalClock whose time runs on the simulation's monotonic clock."""

    def __init__(self, cluster: "ClockCluster", offset: float) -> None:
        self._cluster, self._offset = cluster, offset

    def now(self) -> float:
        return 1.7e9 + self._cluster.now + self._offset

    def adjust(self, delta: float) -> None:
        self._offset += delta

    def skew(self) -> float:
        return self._offset


class ClockNode:
    def __init__(self, sid: int, clock, cluster: "ClockCluster", coordinator: int) -> None:
        self.id, self.clock, self.log = sid, clock, NoteLog()
        self.lamport = LamportClock()
        self.term = Term(is_coordinator=sid == coordinator, epoch=100 + coordinator,
                         coordinator=coordinator)
        self.sync = BerkeleySync(sid, cluster.config, clock, cluster.publish, self.log,
                                 self.term)


class ClockCluster:
    def __init__(self, offsets: dict[int, float], coordinator: int = 1,
                 latency: float = 0.0, simulated: bool = True, config: Config = CONFIG,
                 delays: dict[int, float] | None = None) -> None:
        self.now, self.latency, self.config = 500.0, latency, config
        self.delays = dict(delays or {})
        self.queue: list[tuple[float, int, P.Incoming]] = []
        self.sent: list = []
        self.nodes = {sid: ClockNode(sid, self._clock(offset, simulated), self, coordinator)
                      for sid, offset in offsets.items()}
        self.coordinator = self.nodes[coordinator]

    def _clock(self, offset: float, simulated: bool):
        return SimulatedClock(self, offset) if simulated else PhysicalClock(offset=offset)

    def publish(self, msg) -> None:
        """PUB: stamp and encode once; every node's SUB decodes the same frames."""
        frames = P.encode(msg, self.nodes[msg.sender].lamport.tick())
        incoming = P.decode(frames, P.BUS)
        assert incoming.msg == msg, f"{msg!r} does not survive the wire: {incoming.msg!r}"
        self.sent.append(incoming.msg)
        arrives = self.now + self.latency + self.delays.get(msg.sender, 0.0)
        for sid in self.nodes:
            self.queue.append((arrives, sid, incoming))

    def deliver_due(self) -> None:
        while due := [m for m in self.queue if m[0] <= self.now + 1e-9]:
            for message in due:
                self.queue.remove(message)
                self.dispatch(*message[1:])

    def receive(self, sid: int, frames: list[bytes]) -> None:
        """Frames from anyone reach node ``sid``'s SUB: a bad message is dropped."""
        try:
            incoming = P.decode(frames, P.BUS)
        except P.ProtocolError as exc:
            self.nodes[sid].log.note(f"dropped a bad bus message: {exc}")
            return
        self.dispatch(sid, incoming)

    def dispatch(self, sid: int, incoming: P.Incoming) -> None:
        """What servers/node.py does with a clock message."""
        node = self.nodes[sid]
        node.lamport.merge(incoming.lamport)
        sync, msg = node.sync, incoming.msg
        handler = {P.TIME_QUERY: sync.on_TIME_QUERY,
                   P.TIME_REPLY: sync.on_TIME_REPLY,
                   P.TIME_ADJUST: sync.on_TIME_ADJUST}[msg.TYPE]
        handler(msg, self.now)

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now += STEP
            self.deliver_due()
            for node in self.nodes.values():
                node.sync.tick(self.now)
            self.deliver_due()

    def one_round(self) -> None:
        self.run(self.config.berkeley_reply_window + 2 * self.latency + 2 * STEP)

    def times(self) -> list[float]:
        return [node.clock.now() for node in self.nodes.values()]

    def spread(self) -> float:
        times = self.times()
        return max(times) - min(times)


def sent_of(cluster: ClockCluster, msg_type: str) -> list:
    return [msg for msg in cluster.sent if msg.TYPE == msg_type]


def rounds_opened(cluster: ClockCluster) -> list[P.TimeQuery]:
    """The first TIME_QUERY of each round (a round sends berkeley_probes of them)."""
    return [q for q in sent_of(cluster, P.TIME_QUERY) if q.probe == 0]
