"""Bully with a quorum (issue 13): a coordinator only with a majority behind it.
An isolated coordinator steps down before the rest elect another, a minority side
never has one, any schedule of partitions never has two at once, and a coordinator
silent for a TCP stall is not replaced before it has been silent claim_wait.

The fake bus and clock are in tests/election_rig.py (``QuorumCluster`` adds who
reaches whom). Epochs read ``term * 100 + id``.
"""
from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from common import protocol as P
from servers.election import Bully
from tests.election_rig import CONFIG, STEP, Cluster, Node, on_the_wire


pytestmark = pytest.mark.timeout(30)


# --- a coordinator only with a majority behind it (issue 13) ---------------------------
class QuorumCluster(Cluster):
    """The same bus, cut into sides: a message reaches only the nodes on its sender's
    side. Each node counts a majority with a real ``Quorum`` fed from what it hears,
    as servers/node.py does, and a higher member is alive when heard within
    ``peer_timeout``."""

    def __init__(self, ids) -> None:
        self.sides: dict[int, int] = {}         # node -> side (all 0: no partition)
        self.quorums: dict = {}
        self.ids = list(ids)                    # every node knows every member
        super().__init__(ids)

    def add(self, sid: int) -> Node:
        from servers.quorum import Quorum
        node = super().add(sid)
        q = self.quorums[sid] = Quorum(sid, CONFIG.peer_timeout, members=self.ids)
        node.bully = Bully(sid, CONFIG, lambda msg: self.publish(node, msg), node.log,
                           quorum=q.has_majority,
                           higher_heard=lambda: max(
                               (t for m, t in q.heard.items() if m > sid), default=None))
        self.sides[sid] = 0
        return node

    def partition(self, *groups) -> None:
        for i, group in enumerate(groups):
            for sid in group:
                self.sides[sid] = i

    def heal(self) -> None:
        self.sides = {sid: 0 for sid in self.sides}

    def publish(self, sender: Node, msg) -> None:
        incoming = on_the_wire(msg, sender.lamport.tick())
        for node in self.nodes.values():
            if self.sides[node.id] == self.sides[sender.id]:
                node.inbox.append(incoming)

    def _dispatch(self, node: Node, incoming: P.Incoming) -> None:
        if incoming.msg.sender != node.id:
            self.quorums[node.id].heard_from(incoming.msg.sender, self.now)
        super()._dispatch(node, incoming)

    def check_one_coordinator_per_epoch(self) -> None:
        super().check_one_coordinator_per_epoch()
        for sid, node in self.nodes.items():
            if node.bully.is_coordinator:
                # a coordinator hears a majority, or stops within election_timeout
                q = self.quorums[sid]
                assert q.has_majority(self.now, CONFIG.stepdown_after + STEP), \
                    f"s{sid} coordinates without a majority: {self.view()}"

    def coordinators(self) -> list[int]:
        return [sid for sid, n in self.nodes.items() if n.bully.is_coordinator]

    overlap_since: float | None = None

    def run(self, seconds: float) -> None:
        """As ``Cluster.run``; after each step's deliveries, two coordinators at once
        only for less than ``stepdown_after`` (a partition moved under a fresh claim)."""
        end = self.now + seconds
        while self.now < end:
            super().run(STEP)
            if len(self.coordinators()) <= 1:
                self.overlap_since = None
                continue
            self.overlap_since = self.overlap_since or self.now
            assert self.now - self.overlap_since < CONFIG.stepdown_after + 2 * STEP, \
                f"two coordinators at once for too long: {self.view()}"


def quorum_cluster(ids) -> QuorumCluster:
    cluster = QuorumCluster(ids)
    cluster.run(2 * CONFIG.heartbeat_interval)
    cluster.start()
    cluster.run_until(lambda: cluster.settled_on(max(ids)), limit=5)
    return cluster


def test_an_isolated_coordinator_steps_down_before_the_rest_elect_another():
    cluster = quorum_cluster([1, 2, 3])
    cluster.partition([1, 2], [3])
    took = cluster.run_until(lambda: cluster.coordinators() == [2], limit=5)
    assert took >= CONFIG.election_timeout + CONFIG.answer_timeout - STEP
    assert cluster.nodes[3].log.has("stepping down: no majority of the members heard")
    cluster.run(3.0)                                  # 3 alone never claims again
    assert cluster.coordinators() == [2]
    assert cluster.nodes[3].log.has("no majority of the members in reach")
    cluster.heal()
    cluster.run_until(lambda: cluster.settled_on(3), limit=5)


def test_a_minority_side_never_has_a_coordinator():
    cluster = quorum_cluster([1, 2, 3, 4, 5])
    cluster.partition([1, 2], [3, 4, 5])
    cluster.run(6.0)
    assert cluster.coordinators() == [5]
    assert not cluster.nodes[1].bully.is_coordinator and not cluster.nodes[2].bully.is_coordinator
    cluster.partition([4, 5], [1, 2, 3])              # the coordinator's side is a minority now
    cluster.run_until(lambda: cluster.coordinators() == [3], limit=5)
    cluster.run(3.0)
    assert cluster.coordinators() == [3]


def test_a_late_answer_from_a_live_higher_member_does_not_make_a_new_epoch():
    """Loss delays an ANSWER: the candidate hears no ANSWER in time, but the higher
    member is alive (its BEATs arrive), so it waits for its COORDINATOR instead of
    claiming an epoch of its own."""
    cluster = quorum_cluster([1, 2, 3])
    epoch = cluster.nodes[3].bully.epoch
    b = cluster.nodes[1].bully
    b._call_election(cluster.now)                     # a spurious election (a lost BEAT)
    cluster.nodes[3].inbox.clear()                    # ... whose ELECTION 3 never got
    cluster.nodes[2].inbox.clear()
    cluster.run(CONFIG.answer_timeout + 2 * STEP)
    assert not b.is_coordinator and b.epoch == epoch
    cluster.run(3.0)
    assert cluster.settled_on(3) and cluster.nodes[3].bully.epoch == epoch


PARTITION = st.lists(st.sets(st.integers(1, 5), min_size=1, max_size=4), max_size=4)


@settings(max_examples=40, deadline=None)
@given(PARTITION, st.lists(st.floats(0.5, 3.0), min_size=4, max_size=4))
@example(cuts=[{4}, {1, 5}], waits=[1.0, 0.5, 1.0, 1.0])   # 4's election 5 never heard
def test_any_partition_schedule_never_has_two_coordinators_at_once(cuts, waits):
    cluster = quorum_cluster([1, 2, 3, 4, 5])
    for cut, wait in zip(cuts, waits):
        cluster.partition(cut, set(cluster.nodes) - cut)
        cluster.run(wait)                             # QuorumCluster.run checks each step
    cluster.heal()
    cluster.run_until(lambda: cluster.settled_on(5), limit=10)


def test_a_coordinator_silent_for_a_tcp_stall_is_not_replaced():
    """20% loss on two hops stalls the bus's TCP stream for a second or more: the
    coordinator is silent longer than ``election_timeout``, elections are called, but
    nobody claims while it was heard within ``claim_wait``, and it keeps its epoch."""
    cluster = quorum_cluster([1, 2, 3])
    epoch = cluster.nodes[3].bully.epoch
    cluster.partition([1, 2], [3])
    cluster.run(CONFIG.election_timeout + 0.2)                          # a 1.4 s stall
    cluster.heal()
    cluster.run(4.0)
    assert cluster.settled_on(3) and cluster.nodes[3].bully.epoch == epoch
    assert all(n.bully.epoch == epoch for n in cluster.nodes.values())


def test_a_dead_coordinator_is_replaced_once_it_has_been_silent_claim_wait():
    cluster = quorum_cluster([1, 2, 3])
    epoch = cluster.nodes[3].bully.epoch
    cluster.kill(3)
    took = cluster.run_until(lambda: cluster.coordinators() == [2], limit=5)
    assert CONFIG.claim_wait - 2 * STEP <= took <= CONFIG.claim_wait + 4 * STEP
    assert cluster.nodes[2].bully.epoch > epoch                       # one new epoch
    assert cluster.nodes[2].log.has("no ANSWER, but a server above me was heard")
    cluster.run(3.0)
    assert cluster.settled_on(2)
