"""Bully with epochs, driven in one process: a whole cluster starting, losing and
gaining members; one node fed message by message; and any schedule of crashes,
freezes and joins, after which no two coordinators ever share an epoch.

The fake bus and clock are in tests/election_rig.py. Epochs read
``term * 100 + id``: 105 is term 1, claimed by server 5.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import protocol as P
from servers.election import Bully
from tests.election_rig import (CONFIG, STEP, Cluster, beat, claimed, on_the_wire, settled_cluster,
                                term_of)
from tests.fakes import NoteLog


pytestmark = pytest.mark.timeout(30)


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
