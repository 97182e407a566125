"""Membership, what it hears and says: BEAT and BYE from peers (the vector each
beat brings, a peer gone at once on BYE), peers' liveness (silent peers count as
gone, a silent bus holds them), and the heartbeats it sends to the broker and the bus.

Driven in one process with a fake monotonic clock (tests/membership_rig.py).
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import protocol as P
from servers.peers import GONE, JOINING, LEAVING, SERVING, SYNCING
from tests.membership_rig import CONFIG, HB, ME, STEP, T0, WALL, Rig, ev


pytestmark = pytest.mark.timeout(60)


# --- BEAT and BYE ------------------------------------------------------------------------------
def test_a_joining_beat_resets_a_peers_vector_other_beats_only_grow_it():
    r = Rig()
    r.beat(2, SERVING, {2: 5, 3: 4})
    r.beat(2, SERVING, {2: 3, 4: 1})                  # stale, overtaken by an ACK: ignored
    assert r.peers.table[2].vv == {2: 5, 3: 4, 4: 1}
    r.beat(2, JOINING, {2: 1})                        # restarted without its folder
    assert r.peers.table[2].vv == {2: 1} and r.peers.table[2].phase == JOINING
    r.beat(2, SYNCING, {3: 2})
    assert r.peers.table[2].vv == {2: 1, 3: 2} and r.peers.table[2].phase == SYNCING
    assert r.log.has("phase joining -> syncing")


def test_a_beat_from_a_peer_never_seen_is_ignored():
    r = Rig()
    r.m.on_BEAT(P.Beat(sender=7, phase=SERVING, vv={7: 1}, epoch=0, coordinator=None), T0)
    assert 7 not in r.peers.table


BEATS = st.lists(st.tuples(st.sampled_from([JOINING, SYNCING, SERVING, LEAVING]),
                           st.dictionaries(st.integers(1, 4), st.integers(0, 9), max_size=4)),
                 max_size=15)


@settings(max_examples=300, deadline=None)
@given(BEATS)
def test_a_peers_vector_follows_its_beats(beats):
    r = Rig()
    model: dict[int, int] = {}
    for phase, vv in beats:
        r.beat(2, phase, vv)
        if phase == JOINING:
            model = dict(vv)
        else:
            for o, s in vv.items():
                model[o] = max(model.get(o, 0), s)
        held = {o: s for o, s in r.peers.table[2].vv.items() if s}    # 0: holds none
        assert held == {o: s for o, s in model.items() if s}
        assert r.peers.table[2].phase == phase


def test_bye_counts_a_peer_gone_at_once():
    r = Rig()
    r.live_peers[2] = (SERVING, {2: 1})
    r.live_peers[3] = (SERVING, {})
    r.run(HB)
    del r.live_peers[2]
    r.m.on_BYE(P.Bye(sender=2), r.now)
    assert r.peers.table[2].phase == GONE
    assert [p.id for p in r.peers.live(r.now)] == [3]
    assert r.log.has("BYE: peer leaves")


def test_the_beats_of_a_peer_that_said_bye_keep_it_out_of_the_live_peers():
    r = Rig()
    r.beat(2, SERVING, {2: 4})
    r.m.on_BYE(P.Bye(sender=2), r.now)
    for _ in range(4):                                # it beats until it exits
        r.now += HB
        r.beat(2, LEAVING, {2: 4})
        assert r.peers.live(r.now) == [] and r.peers.table[2].phase == LEAVING
    assert r.catchup.target(r.now) == {}


# --- liveness --------------------------------------------------------------------------------
def test_a_silent_peer_is_gone_after_peer_timeout_and_its_pull_forgotten():
    r = Rig()
    r.m.saw_peer(2, T0)
    r.catchup.fetching[2] = T0 + 100.0              # an outstanding pull to it
    r.run(CONFIG.peer_timeout - STEP)
    assert [p.id for p in r.peers.live(r.now)] == [2] and r.gone == []
    r.run(HB + STEP)
    assert r.gone == [2] and r.peers.table[2].phase == GONE
    assert 2 not in r.catchup.fetching
    assert r.log.has("peer server-2 gone (silent 1500 ms)")
    r.run(2.0)
    assert r.gone == [2]                              # reported once


def test_peers_are_held_while_the_bus_is_silent():
    r = Rig()
    r.m.saw_peer(2, T0)
    r.m.saw_peer(3, T0)
    r.m.on_BYE(P.Bye(sender=3), T0)
    r.run(3 * CONFIG.peer_timeout, bus=False)         # the broker (and bus) is down
    assert r.m.bus_down and r.log.has("bus silent for") and r.log.has("(broker down, or cut off?)")
    assert [p.id for p in r.peers.live(r.now)] == [2] and r.gone == []
    assert r.peers.table[3].phase == GONE             # a BYE still counts
    back = r.now
    r.run(STEP)                                       # the bus is back; 2 says nothing
    r.run(CONFIG.peer_timeout + HB)
    assert not r.m.bus_down and r.log.has("bus back")
    assert r.gone == [2]
    assert r.now - back <= CONFIG.peer_timeout + 2 * HB


def test_a_peer_seen_again_comes_back():
    r = Rig()
    r.m.saw_peer(2, T0)
    r.run(CONFIG.peer_timeout + HB + STEP)
    assert r.gone == [2]
    assert r.m.saw_peer(2, r.now) is True
    assert r.peers.table[2].phase == JOINING and r.peers.live(r.now)


# --- heartbeats ---------------------------------------------------------------------------------
def test_every_heartbeat_goes_to_the_broker_and_the_bus():
    r = Rig()
    r.state.apply(ev(ME, 1))
    r.run(1.0)
    hbs, beats = r.sent(P.Heartbeat, "broker"), r.sent(P.Beat, "bus")
    assert len(hbs) == len(beats) == 4                # at +1/64, +0.25, +0.5, +0.75
    for hb, beat in zip(hbs, beats):
        assert hb.id == ME and hb.clock == WALL and hb.status.id == ME
        assert beat.sender == ME and beat.phase == hb.status.phase
        assert beat.vv == hb.status.vv == {ME: 1}
        assert beat.events == 1 and beat.digest == r.state.digest()
    assert r.m.next_deadline() == r.m.heartbeat_at <= r.now + HB


def test_a_silent_broker_is_reconnected_to():
    r = Rig()
    r.run(CONFIG.broker_timeout - STEP, broker=False)
    assert r.reconnects == 0
    r.run(HB + STEP, broker=False)
    assert r.reconnects == 1 and r.log.has("broker silent")
    r.run(1.0)
    assert r.reconnects == 1
