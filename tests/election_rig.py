"""What the election unit tests (tests/test_election_*unit.py) share: a cluster of
Bully nodes on a fake bus with a fake monotonic clock (``Cluster``).

Every bus message goes to every node, its sender included (the real bus may echo),
with zero latency. It travels as real frames: encoded with the sender's Lamport
stamp and decoded as a server's SUB socket decodes it (``protocol.BUS``), so every
message the election sends must be valid on the wire. A frozen node (SIGSTOP)
neither ticks nor reads; its messages queue up. After every single delivery and
tick the cluster checks that no two nodes act as coordinator in the same epoch.

Epochs read ``term * 100 + id``: 105 is term 1, claimed by server 5.
"""
from __future__ import annotations

from collections import deque

from common import protocol as P
from common.clock import LamportClock
from common.config import Config
from servers.election import Bully
from tests.fakes import NoteLog


def claimed(term: int, sid: int) -> int:
    return term * 100 + sid


def term_of(epoch: int) -> int:
    return epoch // 100


CONFIG = Config().validate()
STEP = 0.05


def on_the_wire(msg, lamport: int = 1) -> P.Incoming:
    """``msg`` as a server's SUB receives it: encoded, then decoded and validated."""
    incoming = P.decode(P.encode(msg, lamport), P.BUS)
    assert incoming.msg == msg, f"{msg!r} does not survive the wire: {incoming.msg!r}"
    return incoming


def beat(sender: int, epoch: int, coordinator: int | None) -> P.Beat:
    return P.Beat(sender=sender, phase="serving", vv={}, epoch=epoch, coordinator=coordinator)


class Node:
    def __init__(self, sid: int, cluster: "Cluster") -> None:
        self.id = sid
        self.inbox: deque[P.Incoming] = deque()
        self.frozen = False
        self.log = NoteLog()
        self.lamport = LamportClock()
        self.bully = Bully(sid, CONFIG, lambda msg: cluster.publish(self, msg), self.log)
        self.next_beat = cluster.now


class Cluster:
    def __init__(self, ids=(), now: float = 1000.0) -> None:
        self.now = now
        self.nodes: dict[int, Node] = {}
        self.checks = 0
        for sid in ids:
            self.add(sid)

    # --- membership and faults ---------------------------------------------------
    def add(self, sid: int) -> Node:
        node = self.nodes[sid] = Node(sid, self)
        return node

    def kill(self, sid: int) -> None:
        del self.nodes[sid]

    def start(self, *ids: int) -> None:
        for sid in ids or list(self.nodes):
            self.nodes[sid].bully.start(self.now)
        self.deliver()

    def resume(self, sid: int) -> None:
        """SIGCONT: the node reads everything that queued up before its timers run."""
        node = self.nodes[sid]
        node.frozen = False
        while node.inbox:
            self._dispatch(node, node.inbox.popleft())
            self.deliver()

    # --- the bus -------------------------------------------------------------------
    def publish(self, sender: Node, msg) -> None:
        """PUB: stamp and encode once; every node's SUB decodes the same frames."""
        assert msg.sender == sender.id, f"s{sender.id} sent {msg!r} as another server"
        incoming = on_the_wire(msg, sender.lamport.tick())
        for node in self.nodes.values():
            node.inbox.append(incoming)

    def deliver(self) -> None:
        while busy := [n for n in self.nodes.values() if n.inbox and not n.frozen]:
            for node in busy:
                self._dispatch(node, node.inbox.popleft())

    def _dispatch(self, node: Node, incoming: P.Incoming) -> None:
        """What servers/node.py does with an election message."""
        b, now, msg = node.bully, self.now, incoming.msg
        node.lamport.merge(incoming.lamport)
        b.saw_peer(msg.sender, now)
        handler = {P.BEAT: b.on_BEAT, P.BYE: b.on_BYE, P.ELECTION: b.on_ELECTION,
                   P.ANSWER: b.on_ANSWER, P.COORDINATOR: b.on_COORDINATOR}[msg.TYPE]
        handler(msg, now)
        self.check_one_coordinator_per_epoch()

    # --- time ------------------------------------------------------------------------
    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += STEP
            for node in [n for n in self.nodes.values() if not n.frozen]:
                self._beat(node)
                node.bully.tick(self.now)
                self.check_one_coordinator_per_epoch()
                self.deliver()

    def run_until(self, condition, limit: float) -> float:
        """Run until ``condition()`` holds; return the simulated seconds it took."""
        start = self.now
        while not condition():
            assert self.now - start < limit, f"not within {limit}s"
            self.run(STEP)
        return self.now - start

    def _beat(self, node: Node) -> None:
        if self.now >= node.next_beat:
            node.next_beat = self.now + CONFIG.heartbeat_interval
            self.publish(node, beat(node.id, node.bully.epoch, node.bully.coordinator))

    # --- what must always hold --------------------------------------------------------
    def check_one_coordinator_per_epoch(self) -> None:
        self.checks += 1
        epochs = [n.bully.epoch for n in self.nodes.values() if n.bully.is_coordinator]
        assert len(epochs) == len(set(epochs)), f"two coordinators in one epoch: {self.view()}"

    def view(self) -> dict[int, tuple[str, int | None, int]]:
        return {sid: (n.bully.state, n.bully.coordinator, n.bully.epoch)
                for sid, n in self.nodes.items()}

    def settled_on(self, sid: int) -> bool:
        """Everyone follows ``sid``, in one epoch, and only ``sid`` coordinates."""
        live = [n.bully for n in self.nodes.values()]
        return (all(b.coordinator == sid for b in live)
                and len({b.epoch for b in live}) == 1
                and [b.my_id for b in live if b.is_coordinator] == [sid])


def settled_cluster(ids) -> Cluster:
    cluster = Cluster(ids)
    cluster.run(2 * CONFIG.heartbeat_interval)     # listen for a moment first
    cluster.start()
    cluster.run_until(lambda: cluster.settled_on(max(ids)), limit=5)
    return cluster
