"""Bully with epochs, driven in one process: a fake bus and a fake monotonic clock.

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

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from common import protocol as P
from common.clock import LamportClock
from common.config import Config
from servers.election import Bully
from tests.fakes import NoteLog


def claimed(term: int, sid: int) -> int:
    return term * 100 + sid


def term_of(epoch: int) -> int:
    return epoch // 100

pytestmark = pytest.mark.timeout(30)

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


# --- whole-cluster behaviour --------------------------------------------------------
def test_highest_id_wins_when_all_start_together():
    cluster = settled_cluster([1, 2, 3, 4, 5])
    assert cluster.nodes[5].bully.epoch == claimed(1, 5)
    assert cluster.nodes[5].log.has("I am coordinator (epoch 105)")
    assert cluster.nodes[2].log.has("coordinator is now s5 (epoch 105)")
    assert sum(n.bully.elections for n in cluster.nodes.values()) >= 1


def test_highest_id_wins_when_started_one_by_one():
    cluster = Cluster([1, 2, 3])
    for sid in (3, 1, 2):
        cluster.start(sid)
        cluster.run(1.0)
    cluster.run_until(lambda: cluster.settled_on(3), limit=5)


def test_killing_coordinator_lets_highest_remaining_win_after_election_timeout():
    cluster = settled_cluster([1, 2, 3, 4, 5])
    epoch = cluster.nodes[5].bully.epoch
    cluster.kill(5)
    took = cluster.run_until(lambda: cluster.settled_on(4), limit=5)
    assert CONFIG.election_timeout - CONFIG.heartbeat_interval <= took
    assert took <= CONFIG.election_timeout + CONFIG.answer_timeout + 2 * STEP
    assert cluster.nodes[4].bully.epoch == claimed(term_of(epoch) + 1, 4)
    assert cluster.nodes[1].log.has("coordinator s5 silent")


def test_a_coordinator_that_says_bye_is_replaced_without_waiting_for_its_silence():
    cluster = settled_cluster([1, 2, 3, 4, 5])
    epoch = cluster.nodes[5].bully.epoch
    cluster.nodes[5].bully.leave()                    # SIGTERM: it stops taking part...
    cluster.publish(cluster.nodes[5], P.Bye(sender=5))  # ...and its BYE reaches the others
    cluster.deliver()
    took = cluster.run_until(lambda: cluster.nodes[4].bully.is_coordinator, limit=5)
    assert not cluster.nodes[5].bully.is_coordinator     # still up, but not elected again
    cluster.kill(5)
    cluster.run_until(lambda: cluster.settled_on(4), limit=5)
    assert took < CONFIG.election_timeout
    assert cluster.nodes[4].bully.epoch > epoch
    assert cluster.nodes[1].log.has("coordinator s5 left: election at once")


def test_higher_id_joining_takes_over_with_a_higher_epoch():
    cluster = settled_cluster([1, 2, 3])
    epoch = cluster.nodes[3].bully.epoch
    cluster.add(7)
    cluster.run(2 * CONFIG.heartbeat_interval)
    assert cluster.nodes[7].bully.coordinator == 3      # learned from the BEATs
    cluster.start(7)
    cluster.run_until(lambda: cluster.settled_on(7), limit=5)
    assert cluster.nodes[7].bully.epoch == claimed(term_of(epoch) + 1, 7)
    assert cluster.nodes[3].log.has(f"stepping down: saw epoch {claimed(2, 7)} from s7")


def test_lower_id_joining_keeps_the_coordinator_and_its_epoch():
    cluster = settled_cluster([2, 3, 4])
    epoch = cluster.nodes[4].bully.epoch
    cluster.add(1)
    cluster.run(2 * CONFIG.heartbeat_interval)
    cluster.start(1)
    cluster.run(3.0)
    assert cluster.settled_on(4)
    assert cluster.nodes[4].bully.epoch == epoch


def test_frozen_coordinator_steps_down_on_resume_before_its_timers_run():
    cluster = settled_cluster([1, 2, 3])
    old_epoch = cluster.nodes[3].bully.epoch
    cluster.nodes[3].frozen = True
    cluster.run_until(lambda: cluster.nodes[2].bully.is_coordinator, limit=5)
    cluster.run(1.0)
    assert cluster.nodes[2].bully.epoch == claimed(term_of(old_epoch) + 1, 2)
    assert cluster.nodes[3].bully.is_coordinator             # still believes it, frozen

    cluster.resume(3)                                         # queued messages, no tick
    assert not cluster.nodes[3].bully.is_coordinator
    assert cluster.nodes[3].log.has(f"stepping down: saw epoch {claimed(2, 2)} from s2")
    cluster.run_until(lambda: cluster.settled_on(3), limit=5)  # bully: 3 takes over again
    assert cluster.nodes[3].bully.epoch == claimed(term_of(old_epoch) + 2, 3)
    assert cluster.checks > 100


def test_newcomer_that_cannot_learn_the_epoch_still_claims_a_different_one():
    """Found by the property test: the coordinator frozen, everyone else dead, a
    newcomer hears no BEAT and knows no epoch; its claim must still differ."""
    cluster = settled_cluster([1, 2, 4])
    for sid in (1, 2):
        cluster.kill(sid)
    cluster.nodes[4].frozen = True
    cluster.add(1)
    cluster.run(2 * CONFIG.heartbeat_interval)
    cluster.start(1)
    cluster.run_until(lambda: cluster.nodes[1].bully.is_coordinator, limit=2)
    assert cluster.nodes[1].bully.epoch == claimed(1, 1) < cluster.nodes[4].bully.epoch
    cluster.resume(4)
    cluster.run_until(lambda: cluster.settled_on(4), limit=5)


def test_server_ids_must_fit_the_epoch_encoding():
    with pytest.raises(ValueError):
        Bully(100, CONFIG, lambda msg: None, None)


# --- one node, message by message ------------------------------------------------------
def lone(sid: int = 2) -> tuple[Bully, list, NoteLog]:
    """One Bully; ``sent`` holds what it published, as its peers would decode it."""
    sent: list = []
    log = NoteLog()
    return Bully(sid, CONFIG, lambda msg: sent.append(on_the_wire(msg).msg), log), sent, log


def test_candidate_without_answer_wins_after_answer_timeout():
    b, sent, _ = lone()
    b.start(10.0)
    assert sent == [P.Election(sender=2, epoch=0)]
    assert b.next_deadline() == pytest.approx(10.0 + CONFIG.answer_timeout)
    b.tick(10.0 + CONFIG.answer_timeout - 0.01)
    assert b.state == "candidate"
    b.tick(10.0 + CONFIG.answer_timeout)
    assert (b.state, b.coordinator, b.epoch) == ("coordinator", 2, 102)
    assert sent[-1] == P.Coordinator(sender=2, epoch=102)
    assert b.next_deadline() is None
    assert b.messages_sent == 2 and b.elections == 1


def test_answered_candidate_calls_again_when_no_coordinator_comes():
    b, sent, log = lone()
    b.start(10.0)
    b.on_ANSWER(P.Answer(sender=3, to=2, epoch=0), 10.1)
    b.tick(10.0 + CONFIG.answer_timeout + 0.01)
    assert b.state == "candidate" and not b.is_coordinator
    assert b.next_deadline() == pytest.approx(10.1 + CONFIG.coordinator_wait)
    b.tick(10.1 + CONFIG.coordinator_wait)
    assert b.elections == 2 and log.has("no COORDINATOR after an ANSWER")


def test_election_from_lower_id_is_answered_and_from_higher_id_ignored():
    b, sent, _ = lone(2)
    b.on_COORDINATOR(P.Coordinator(sender=3, epoch=403), 1.0)
    b.start(1.0)
    b.on_COORDINATOR(P.Coordinator(sender=3, epoch=403), 1.1)            # 3 re-announces
    sent.clear()
    b.on_ELECTION(P.Election(sender=3, epoch=403), 1.2)
    assert sent == []
    b.on_ELECTION(P.Election(sender=1, epoch=403), 1.3)
    assert sent == [P.Answer(sender=2, to=1, epoch=403), P.Election(sender=2, epoch=403)]


def test_current_coordinator_answers_a_lower_election_by_announcing_again():
    b, sent, _ = lone(5)
    b.start(0.0)
    b.tick(CONFIG.answer_timeout)
    sent.clear()
    b.on_ELECTION(P.Election(sender=1, epoch=105), 2.0)
    assert sent == [P.Answer(sender=5, to=1, epoch=105), P.Coordinator(sender=5, epoch=105)]
    assert b.is_coordinator and b.epoch == 105


def test_coordinator_with_a_lower_epoch_is_rejected():
    b, _, log = lone(2)
    b.on_COORDINATOR(P.Coordinator(sender=3, epoch=503), 1.0)
    b.on_COORDINATOR(P.Coordinator(sender=4, epoch=404), 1.1)
    assert (b.coordinator, b.epoch) == (3, 503)
    assert log.has("rejected COORDINATOR from s4: epoch 404 < mine 503")


def test_coordinator_steps_down_for_a_higher_id_in_its_own_epoch_only():
    b, _, log = lone(2)
    b.start(0.0)
    b.tick(CONFIG.answer_timeout)
    assert b.is_coordinator and b.epoch == 102
    b.on_BEAT(beat(1, 102, 1), 1.1)                    # a forged lower rival
    assert b.is_coordinator
    b.on_BEAT(beat(4, 102, 2), 1.2)                    # a higher id following me
    assert b.is_coordinator
    b.on_BEAT(beat(3, 102, 3), 1.3)
    assert (b.state, b.coordinator, b.epoch) == ("follower", 3, 102)
    assert log.has("stepping down: saw epoch 102 from s3")


def test_beat_with_a_higher_epoch_and_a_lower_coordinator_makes_me_take_over():
    b, sent, _ = lone(4)
    b.start(0.0)
    b.tick(CONFIG.answer_timeout)
    b.on_BEAT(beat(1, 702, 2), 2.0)
    assert not b.is_coordinator and b.state == "candidate" and b.coordinator == 2
    b.tick(2.0 + CONFIG.answer_timeout)
    assert b.is_coordinator and b.epoch == 804


def test_silent_coordinator_triggers_an_election_after_election_timeout():
    b, sent, log = lone(2)
    b.start(0.0)
    b.on_COORDINATOR(P.Coordinator(sender=3, epoch=103), 0.1)
    b.saw_peer(3, 0.5)
    assert b.next_deadline() == pytest.approx(0.5 + CONFIG.election_timeout)
    b.tick(0.5 + CONFIG.election_timeout - 0.01)
    assert b.state == "follower"
    b.tick(0.5 + CONFIG.election_timeout)
    assert b.state == "candidate" and b.coordinator is None
    b.on_BEAT(beat(1, 103, 3), 1.8)    # a peer that has not noticed yet: no re-adoption
    assert b.state == "candidate" and b.coordinator is None


def test_a_beat_naming_me_from_before_a_restart_is_not_adopted():
    b, _, _ = lone(3)
    b.on_BEAT(beat(1, 603, 3), 0.0)
    assert b.coordinator is None
    b.start(0.1)
    b.tick(0.1 + CONFIG.answer_timeout)
    assert b.is_coordinator and b.epoch == 703


# --- any schedule of crashes, freezes and joins ------------------------------------------
FAULT = st.tuples(st.sampled_from(["kill", "freeze", "resume", "join"]),
                  st.integers(1, 6), st.floats(0.0, 2.5))


@settings(max_examples=40, deadline=None)
@given(st.lists(FAULT, max_size=6))
def test_any_fault_schedule_never_has_two_coordinators_in_one_epoch(faults):
    cluster = settled_cluster([1, 2, 3, 4])
    for action, sid, wait in faults:
        node = cluster.nodes.get(sid)
        if action == "kill" and node and len(cluster.nodes) > 1:
            cluster.kill(sid)
        elif action == "freeze" and node:
            node.frozen = True
        elif action == "resume" and node and node.frozen:
            cluster.resume(sid)
        elif action == "join" and not node:
            cluster.add(sid)
            cluster.run(2 * CONFIG.heartbeat_interval)
            cluster.start(sid)
        cluster.run(wait)
    for sid in [sid for sid, n in cluster.nodes.items() if n.frozen]:
        cluster.resume(sid)
    cluster.run_until(lambda: cluster.settled_on(max(cluster.nodes)), limit=10)


def test_a_claim_far_above_any_known_epoch_is_not_believed():
    """One forged COORDINATOR far ahead would push every later claim toward the
    protocol's ceiling; it is ignored, and the next election stays sane."""
    from servers.election import EPOCH_LEAD
    b, sent, log = lone(sid=5)
    b.start(10.0)
    b.tick(10.0 + CONFIG.answer_timeout)                 # coordinator at epoch 105
    assert b.epoch == 105
    b.on_COORDINATOR(P.Coordinator(sender=9, epoch=105 + EPOCH_LEAD + 1), 11.0)
    assert (b.state, b.coordinator, b.epoch) == ("coordinator", 5, 105)
    assert any("far above" in line for line in log.lines)
    b.on_COORDINATOR(P.Coordinator(sender=9, epoch=309), 11.1)     # an honest higher claim
    assert (b.coordinator, b.epoch) == (9, 309)


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
