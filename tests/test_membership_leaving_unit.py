"""Membership, the way out: leaving (a clean LEAVE once idle, or at the deadline),
halted on a disk that takes no writes, a serving server that stops serving the
moment it can no longer vouch for fresh reads (issue 13), and, over any schedule,
that the phases follow the phase machine and READY goes out once per serving.

Driven in one process with a fake monotonic clock (tests/membership_rig.py).
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import protocol as P
from servers.peers import HALTED, JOINING, LEAVING, SERVING, SYNCING, Peers
from tests.membership_rig import CONFIG, HB, ME, STEP, T0, Rig, ev


pytestmark = pytest.mark.timeout(60)


# --- leaving --------------------------------------------------------------------------------------
def test_leave_tells_broker_and_bus_and_stops_once_idle():
    r = Rig(idle=False).serving()
    r.m.request_leave()
    assert r.m.phase == SERVING                       # only a flag, in the signal handler
    r.run(STEP)
    start = r.now
    assert r.m.phase == LEAVING and r.phases[-1][:2] == (SERVING, LEAVING)
    assert r.sent(P.Leave, "broker") == [P.Leave(id=ME)]
    assert r.sent(P.Bye, "bus") == [P.Bye(sender=ME)]
    r.run(0.25)
    assert r.m.running
    r.idle = True                                     # the last write has its copies
    r.run(STEP)
    assert not r.m.running
    assert r.now - start < CONFIG.leave_deadline
    r.m.request_leave()                               # a second SIGTERM
    r.run(STEP)
    assert len(r.sent(P.Leave)) == 1 and len(r.sent(P.Bye)) == 1


def test_leave_gives_up_on_waiting_writes_at_the_deadline():
    r = Rig(idle=False).serving()
    r.m.request_leave()
    r.run(STEP)
    start = r.now
    r.run(CONFIG.leave_deadline - STEP, until=lambda: not r.m.running)
    assert r.m.running
    r.run(2 * STEP, until=lambda: not r.m.running)
    assert not r.m.running and r.now - start == pytest.approx(CONFIG.leave_deadline, abs=STEP)


def test_an_idle_server_leaves_in_the_same_tick():
    r = Rig(idle=True).serving()
    r.m.request_leave()
    r.run(STEP)
    assert r.m.phase == LEAVING and not r.m.running


# --- halted (a disk that takes no writes) ---------------------------------------------------------
WAITING = "disk full: data/server-1 (No space left on device); rejoining once it can write"


@pytest.mark.parametrize("before", [JOINING, SYNCING, SERVING])
def test_a_halted_server_leaves_as_a_clean_leave_and_then_only_heartbeats_the_broker(before):
    r = Rig(idle=False, synced=False)
    r.live_peers[2] = (SERVING, {2: 3})
    r.run({JOINING: STEP, SYNCING: 3 * HB, SERVING: 0.0}[before])
    if before == SERVING:
        r = Rig(idle=False).serving()
    assert r.m.phase == before
    r.m.halt("disk full", WAITING, r.now)
    assert r.m.phase == HALTED and r.phases[-1][:2] == (before, HALTED)
    assert r.m.waiting == WAITING and r.status(r.now).waiting == WAITING
    assert r.log.has(f"phase {before} -> halted: disk full")
    assert r.sent(P.Leave, "broker") == [P.Leave(id=ME)]
    assert r.sent(P.Bye, "bus") == [P.Bye(sender=ME)]
    r.m.halt("disk full", WAITING, r.now)             # a second failure: nothing more
    beats, hbs, readies = len(r.sent(P.Beat)), len(r.sent(P.Heartbeat)), len(r.sent(P.Ready))
    r.live_peers.clear()                              # deaf to the bus from now on
    r.run(5.0, bus=False)
    assert r.m.phase == HALTED and r.m.running and r.m.waiting == WAITING
    assert len(r.sent(P.Beat)) == beats                # nothing on the bus...
    assert len(r.sent(P.Bye)) == 1 and len(r.sent(P.Ready)) == readies   # never back in
    halted_hbs = r.sent(P.Heartbeat, "broker")[hbs:]   # ...but the broker hears on
    assert len(halted_hbs) == 20 and {hb.status.phase for hb in halted_hbs} == {HALTED}
    assert {hb.status.waiting for hb in halted_hbs} == {WAITING}
    assert not r.log.has("bus silent") and r.gone == []  # nothing judged from the silence


def test_sigterm_stops_a_halted_server_at_once_and_a_leaving_one_that_halts():
    r = Rig(idle=False).serving()
    r.m.halt("disk full", WAITING, r.now)
    r.m.request_leave()
    r.run(STEP)
    assert not r.m.running and r.m.phase == LEAVING
    assert len(r.sent(P.Leave)) == 1 and len(r.sent(P.Bye)) == 1   # said when it halted

    r = Rig(idle=False).serving()
    r.m.request_leave()
    r.run(STEP)
    assert r.m.phase == LEAVING and r.m.running        # waits for its writes' copies...
    r.m.halt("disk full", WAITING, r.now)
    assert not r.m.running and r.m.phase == LEAVING    # ...which its disk cannot hold


def test_a_halted_peer_counts_for_nothing():
    peers = Peers(ME, CONFIG.peer_timeout)
    peer, _ = peers.saw(2, T0)
    peer.phase, peer.vv = HALTED, {2: 5}
    assert peers.live(T0) == [] and peers.holders(2, 5, T0) == 0
    assert peers.saw(2, T0) == (peer, False) and peer.phase == HALTED


# --- any schedule: the phase machine ------------------------------------------------------------
SCHEDULE = st.lists(st.one_of(
    st.tuples(st.just("wait"), st.floats(0.0, 1.0)),
    st.tuples(st.just("stall"), st.floats(0.0, 3.0)),
    st.tuples(st.just("apply"), st.integers(1, 3)),
    st.tuples(st.just("clock"), st.booleans()),
    st.tuples(st.just("leave"), st.just(0))), max_size=20)
ALLOWED = {(JOINING, SYNCING), (SYNCING, SERVING), (SYNCING, JOINING), (SERVING, JOINING),
           (JOINING, LEAVING), (SYNCING, LEAVING), (SERVING, LEAVING)}


@settings(max_examples=150, deadline=None)
@given(SCHEDULE)
def test_any_schedule_follows_the_phase_machine_and_readies_once_per_serving(schedule):
    r = Rig(synced=False, idle=False)
    r.live_peers[2] = (SERVING, {2: 3})
    served_caught_up = []
    for action, arg in schedule:
        before = len(r.phases)
        if action == "wait":
            r.run(arg)
        elif action == "stall":
            r.now += arg
            r.m.tick(r.now)
        elif action == "apply":
            for _ in range(arg):
                if r.state.seq_of(2) < 3:
                    r.state.apply(ev(2, r.state.seq_of(2) + 1))
        elif action == "clock":
            r.synced = arg
        elif action == "leave":
            r.m.request_leave()
        for old, new, _ in r.phases[before:]:
            if new == SERVING:
                served_caught_up.append(r.catchup.caught_up(r.m.target))
    for old, new, _ in r.phases:
        assert (old, new) in ALLOWED
    serving_entries = sum(1 for _, new, _ in r.phases if new == SERVING)
    assert len(r.sent(P.Ready)) == serving_entries
    assert all(served_caught_up)
    assert len(r.sent(P.Leave)) == len(r.sent(P.Bye)) == \
        sum(1 for _, new, _ in r.phases if new == LEAVING) <= 1


# --- issue 13: no stale reads ---------------------------------------------------------------
def test_a_serving_server_whose_bus_falls_silent_leaves_serving_at_once():
    r = Rig().serving()
    sent = len(r.broker)
    r.run(CONFIG.peer_timeout, bus=False)            # cut off: not even my own echo comes back
    assert r.m.phase == JOINING and (SERVING, JOINING) in [(o, n) for o, n, _ in r.phases]
    left_at = next(t for o, n, t in r.phases if (o, n) == (SERVING, JOINING))
    # before a peer could count me out (peer_timeout) and ack writes without me
    assert left_at - (r.m.bus_seen) < CONFIG.peer_timeout
    assert r.log.has("the bus is silent: the others may acknowledge writes I never see")
    assert any(isinstance(m, P.Heartbeat) and m.status.phase == JOINING
               for m in r.broker[sent:])             # the broker hears it at once
    r.run(6 * HB)                                    # the bus is back: caught up, READY again
    assert r.m.phase == SERVING and len(r.sent(P.Ready)) == 2


def test_a_serving_server_the_broker_does_not_pool_sends_ready_again():
    r = Rig().serving()
    assert len(r.sent(P.Ready)) == 1
    r.m.on_broker_HB(P.Heartbeat(pooled=False), r.now)     # READY just sent: still in flight
    assert len(r.sent(P.Ready)) == 1
    r.now += 2 * HB
    r.m.on_broker_HB(P.Heartbeat(pooled=True), r.now)
    assert len(r.sent(P.Ready)) == 1
    r.m.on_broker_HB(P.Heartbeat(pooled=False), r.now)     # the broker restarted
    assert len(r.sent(P.Ready)) == 2 and r.log.has("I am not in its pool: READY again")


def test_a_server_not_serving_never_sends_ready_on_the_brokers_word():
    r = Rig(synced=False)
    r.run(HB)                                            # joining
    r.m.on_broker_HB(P.Heartbeat(pooled=False), r.now)
    assert r.sent(P.Ready) == []
