"""Membership: phases, heartbeats, the stall check, BEAT/BYE and peers' liveness.

Driven in one process with a fake monotonic clock. Every callback the server
would give is a recorder here: what goes on the bus and to the broker is checked
to be valid on the wire (``protocol.validate``) and kept. Time advances in
steps of 1/64 s, exact in binary, so heartbeat arithmetic is exact.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import protocol as P
from common.config import Config
from servers.catchup import CatchUp
from servers.membership import Membership
from servers.peers import GONE, HALTED, JOINING, LEAVING, SERVING, SYNCING, Peers
from servers.state import SocialState
from tests.fakes import TalkLog

pytestmark = pytest.mark.timeout(60)

CONFIG = Config().validate()
HB = CONFIG.heartbeat_interval
T0 = 1000.0
ME = 1
STEP = 1 / 64
WALL = 1.7e9


def ev(origin: int, seq: int) -> P.Event:
    return P.Event(id=f"o{origin}s{seq}", kind=P.EV_POST, user="alice", lamport=seq,
                   ts=1.7e9, origin=origin, seq=seq, data=P.EventData(text=f"t{origin}.{seq}"))


class Rig:
    """One Membership and everything it is given; ``run`` is the server's loop."""

    def __init__(self, synced: bool = True, idle: bool = True, now: float = T0,
                 must_hold: dict | None = None, damaged: str | None = None) -> None:
        self.now = now
        self.state = SocialState()
        self.peers = Peers(ME, CONFIG.peer_timeout)
        self.catchup = CatchUp(self.state, self.peers, CONFIG.gap_grace, CONFIG.fetch_timeout)
        self.log = TalkLog()
        self.bus: list = []
        self.broker: list = []
        self.phases: list[tuple[str, str, float]] = []
        self.gone: list[int] = []
        self.reconnects = 0
        self.repairs = 0
        self.synced = synced
        self.idle = idle
        self.live_peers: dict[int, tuple[str, dict]] = {}   # who beats on the bus, and what
        self.m = Membership(
            ME, CONFIG, self.peers, self.catchup, self.log, now=now,
            publish=self._publish, to_broker=self._to_broker, status=self.status,
            wall_clock=lambda: WALL, clock_synced=lambda: self.synced,
            idle=lambda: self.idle, on_phase=lambda o, n, t: self.phases.append((o, n, t)),
            on_peer_gone=self.gone.append, reconnect_broker=self._reconnect,
            must_hold=must_hold, on_repaired=self._repaired)
        if damaged is not None:
            self.m.folder_damaged(damaged)

    def _publish(self, msg) -> None:
        P.validate(msg)
        self.bus.append(msg)

    def _to_broker(self, msg) -> None:
        P.validate(msg)
        self.broker.append(msg)

    def _reconnect(self) -> None:
        self.reconnects += 1

    def _repaired(self) -> None:
        self.repairs += 1

    def hold(self, origin: int, upto: int) -> None:
        """Events of ``origin`` up to ``upto`` arrive (pulled, or on the bus)."""
        for seq in range(self.state.seq_of(origin) + 1, upto + 1):
            self.state.apply(ev(origin, seq))

    def status(self, now: float) -> P.ServerStatus:
        return P.ServerStatus(
            id=ME, phase=self.m.phase, events=self.state.count, digest=self.state.digest(),
            lamport=0, vv=self.state.vv(), coordinator=None, epoch=0, clock_offset_ms=None,
            clock_skew_ms=0.0, last_sync=None, under_replicated=0, repl_lag_hist=[],
            peers=sorted(p.id for p in self.peers.live(now)), waiting=self.m.waiting)

    def sent(self, cls, where=None) -> list:
        return [m for m in (self.broker if where == "broker" else
                            self.bus if where == "bus" else self.broker + self.bus)
                if isinstance(m, cls)]

    def beat(self, pid: int, phase: str, vv: dict) -> None:
        """A peer's BEAT, as node.on_bus hands it on (saw_peer first)."""
        self.m.saw_peer(pid, self.now)
        self.m.on_BEAT(P.Beat(sender=pid, phase=phase, vv=vv, epoch=0, coordinator=None),
                       self.now)

    def run(self, seconds: float, bus: bool = True, broker: bool = True,
            until=None) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += STEP
            if bus:
                self.m.heard_bus(self.now)            # my own echo came back
                for pid, (phase, vv) in self.live_peers.items():
                    self.beat(pid, phase, vv)
            if broker:
                self.m.heard_broker(self.now)
            self.m.tick(self.now)
            if until is not None and until():
                return

    def serving(self) -> "Rig":
        self.run(3 * HB + STEP)
        assert self.m.phase == SERVING
        return self


# --- joining -> syncing -> serving ------------------------------------------------------
def test_joining_listens_for_three_heartbeats_then_syncs_toward_the_peers_target():
    r = Rig(synced=False)
    r.live_peers[2] = (SERVING, {2: 3, 3: 1})
    r.run(3 * HB - STEP)
    assert r.m.phase == JOINING and r.phases == []
    r.run(STEP)
    assert r.m.phase == SYNCING
    assert r.phases == [(JOINING, SYNCING, T0 + 3 * HB)]
    assert r.m.target == {2: 3, 3: 1}
    assert r.log.has("phase joining -> syncing: target {2: 3, 3: 1}")


def test_a_server_that_lost_its_own_events_waits_for_a_peer_that_holds_them():
    """Issue 11, row 1: my folder holds my events up to 0, but I issued up to 5. Alone, I
    do not serve (I would number writes 1, 2, ... again), and I say why; once a peer
    holding them is back and I have pulled them, I serve."""
    r = Rig(must_hold={ME: 5})
    r.run(3 * HB + 10 * HB)
    assert r.m.phase == SYNCING and r.m.target == {ME: 5}
    assert "issued up to 5" in r.m.waiting and r.sent(P.Ready) == []
    assert r.status(r.now).waiting == r.m.waiting
    assert r.log.has("not serving: my folder holds my events up to seq 0")
    r.live_peers[2] = (SERVING, {ME: 5})
    r.run(HB)
    assert r.m.phase == SYNCING and r.m.waiting is None      # reachable now: pulling
    for seq in range(1, 6):
        r.state.apply(ev(ME, seq))
    r.run(HB, until=lambda: r.m.phase == SERVING)
    assert r.m.phase == SERVING and len(r.sent(P.Ready)) == 1


def test_syncing_serves_only_once_caught_up_and_sends_ready_once():
    r = Rig(synced=True)
    r.live_peers[2] = (SERVING, {2: 3})
    r.run(3 * HB)
    assert r.m.phase == SYNCING
    r.run(1.0)
    assert r.m.phase == SYNCING and r.sent(P.Ready) == []       # still lacks 2:1..3
    for seq in (1, 2):
        r.state.apply(ev(2, seq))
    r.run(0.5)
    assert r.m.phase == SYNCING
    r.state.apply(ev(2, 3))
    r.run(STEP)
    assert r.m.phase == SERVING and r.phases[-1][:2] == (SYNCING, SERVING)
    r.run(3.0)
    assert r.sent(P.Ready, "broker") == [P.Ready(id=ME)]          # exactly once
    assert r.m.serving


def test_without_a_clock_correction_syncing_waits_join_clock_wait():
    r = Rig(synced=False)
    r.run(3 * HB)
    assert r.m.phase == SYNCING                                    # caught up at once
    r.run(CONFIG.join_clock_wait - STEP)
    assert r.m.phase == SYNCING and r.sent(P.Ready) == []
    r.run(STEP)
    assert r.m.phase == SERVING and len(r.sent(P.Ready)) == 1


def test_a_clock_correction_lets_a_caught_up_server_serve_at_the_next_tick():
    r = Rig(synced=False)
    r.run(3 * HB + 0.5)
    assert r.m.phase == SYNCING
    r.synced = True
    r.run(STEP)
    assert r.m.phase == SERVING


def test_a_target_whose_only_holder_leaves_is_lowered():
    r = Rig()
    r.live_peers[2] = (SERVING, {2: 5})
    r.run(3 * HB)
    assert r.m.phase == SYNCING and r.m.target == {2: 5}
    r.run(1.0)
    assert r.m.phase == SYNCING
    del r.live_peers[2]
    r.m.on_BYE(P.Bye(sender=2), r.now)
    r.run(STEP)
    assert r.m.target == {2: 0} and r.m.phase == SERVING


# --- a damaged folder (issue 11, row 4) -----------------------------------------------------
DAMAGE_WAIT = "my data folder was damaged (db.json): waiting for a peer to sync from"


def test_a_damaged_folder_waits_for_a_serving_peer_then_serves_once_it_holds_what_that_held():
    """db.json was junk: what it held is unknown. Alone, the server has caught up with
    everyone live (nobody) but must not serve; a syncing peer is no source either (it
    may have lost the same); a serving one is, once its events are all here."""
    r = Rig(damaged="db.json")
    r.run(3 * HB + 10 * HB)
    assert r.m.phase == SYNCING and r.sent(P.Ready) == []
    assert r.m.waiting == DAMAGE_WAIT and r.status(r.now).waiting == DAMAGE_WAIT
    assert r.log.has(f"WARNING not serving: {DAMAGE_WAIT}")
    r.live_peers[2] = (SYNCING, {2: 4})                   # damaged too, perhaps
    r.run(10 * HB)
    assert r.m.phase == SYNCING and r.m.waiting == DAMAGE_WAIT
    r.live_peers[3] = (SERVING, {2: 4, 3: 2})
    r.run(HB)
    assert r.m.phase == SYNCING and r.m.waiting is None   # a source: syncing from it
    r.hold(2, 4)
    r.run(HB)
    assert r.m.phase == SYNCING and r.repairs == 0        # 3:1..2 still missing
    r.hold(3, 2)
    r.run(HB, until=lambda: r.m.phase == SERVING)
    assert r.m.phase == SERVING and len(r.sent(P.Ready)) == 1 and r.repairs == 1
    assert r.log.has("repaired (db.json): I hold all that server-3 held when I began to "
                     "sync from it, {2:4,3:2}")
    assert r.m.damaged is None
    r.now = r.m.beat_sent_at + 10.0                      # a stall later: no second repair
    r.run(3 * HB + HB, until=lambda: r.m.phase == SERVING)
    assert r.m.phase == SERVING and r.repairs == 1


def test_a_repair_is_measured_against_what_the_peer_held_when_picked_not_what_it_holds_now():
    """Under writes a serving peer is always a little ahead: the repair ends once its
    holdings at the pick are here, as a snapshot would, or it could go on forever."""
    r = Rig(damaged="db.json missing")
    r.live_peers[2] = (SERVING, {2: 3})
    r.run(3 * HB + HB)
    assert r.m.phase == SYNCING and r.m.repair_from == (2, {2: 3})
    r.live_peers[2] = (SERVING, {2: 9})
    r.hold(2, 3)
    r.run(HB, until=lambda: r.m.phase == SERVING)
    assert r.m.phase == SERVING and r.repairs == 1
    assert r.log.has("repaired (db.json missing): I hold all that server-2 held")


def test_a_repair_whose_peer_stops_serving_is_taken_up_with_another():
    r = Rig(damaged="db.json")
    r.live_peers[2] = (SERVING, {2: 5})
    r.run(3 * HB + HB)
    assert r.m.repair_from == (2, {2: 5})
    del r.live_peers[2]
    r.m.on_BYE(P.Bye(sender=2), r.now)
    r.run(HB)
    assert r.m.phase == SYNCING and r.m.waiting == DAMAGE_WAIT and r.repairs == 0
    r.live_peers[3] = (SERVING, {3: 1})
    r.hold(3, 1)
    r.run(HB, until=lambda: r.m.phase == SERVING)
    assert r.m.phase == SERVING and r.log.has("I hold all that server-3 held")


def test_my_own_missing_events_are_said_before_the_damage():
    r = Rig(must_hold={ME: 2}, damaged="db.json")
    r.run(3 * HB + HB)
    assert "issued up to 2" in r.m.waiting


def test_the_line_that_ends_a_sync_says_how_many_events_were_pulled_from_whom():
    r = Rig()
    r.live_peers[2] = (SERVING, {2: 3, 3: 1})
    r.live_peers[3] = (SERVING, {3: 1})
    r.run(3 * HB)
    assert r.m.phase == SYNCING
    r.hold(2, 3)
    r.catchup.answered(2, False, r.now, new=3)
    r.hold(3, 1)
    r.catchup.answered(3, False, r.now, new=1)
    r.run(HB, until=lambda: r.m.phase == SERVING)
    assert r.log.has("caught up: 4 events, digest ")
    assert r.log.has("; pulled 4 events: 3 from server-2, 1 from server-3")
    r.catchup.answered(2, False, r.now, new=5)           # a gap pulled while serving...
    r.now = r.m.beat_sent_at + 10.0                      # ...is not counted in the next sync
    r.run(3 * HB + HB, until=lambda: r.m.phase == SERVING)
    assert r.log.lines[-1].endswith("; nothing pulled")


# --- the stall check ------------------------------------------------------------------------
PATIENCE = min(CONFIG.peer_timeout, CONFIG.server_timeout) - HB


def test_a_stall_long_enough_to_be_counted_gone_sends_a_serving_server_back_to_joining():
    r = Rig().serving()
    broker_before = len(r.broker)
    r.now = r.m.beat_sent_at + PATIENCE              # SIGSTOP, then SIGCONT
    r.m.check_frozen(r.now)
    assert r.m.phase == JOINING
    assert r.phases[-1] == (SERVING, JOINING, r.now)
    [hb] = r.broker[broker_before:]
    assert isinstance(hb, P.Heartbeat) and hb.status.phase == JOINING
    assert r.log.has("stalled for 1250 ms without a heartbeat")
    r.run(3 * HB + STEP)                             # catches up again, READY again
    assert r.m.phase == SERVING and len(r.sent(P.Ready)) == 2


def test_a_shorter_pause_is_no_stall():
    r = Rig().serving()
    r.now = r.m.beat_sent_at + PATIENCE - STEP
    r.m.heard_bus(r.now)           # the loop drains what queued up (my echo too) first
    r.m.tick(r.now)
    assert r.m.phase == SERVING


def test_the_stall_check_runs_before_the_heartbeat_of_a_tick():
    r = Rig().serving()
    r.now = r.m.beat_sent_at + 10.0
    r.m.tick(r.now)                                  # the heartbeat says joining, not serving
    assert r.m.phase == JOINING
    assert r.sent(P.Beat)[-1].phase == JOINING


@pytest.mark.parametrize("phase", [JOINING, LEAVING, HALTED])
def test_no_stall_check_while_joining_leaving_or_halted(phase):
    r = Rig(idle=False)
    if phase == LEAVING:
        r = Rig(idle=False).serving()
        r.m.request_leave()
        r.run(STEP)
    if phase == HALTED:
        r = Rig(idle=False).serving()
        r.m.halt("disk full", "disk full: data/server-1", r.now)
    r.now = r.m.beat_sent_at + 10.0
    r.m.check_frozen(r.now)
    assert r.m.phase == phase


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
