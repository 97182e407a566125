"""Membership, the way in: joining -> syncing -> serving, a damaged folder that
waits for a peer to repair from, and the stall check that sends a server that was
away too long back to joining.

Driven in one process with a fake monotonic clock (tests/membership_rig.py): what
goes on the bus and to the broker is checked to be valid on the wire and kept.
"""
from __future__ import annotations

import pytest

from common import protocol as P
from servers.peers import HALTED, JOINING, LEAVING, SERVING, SYNCING
from tests.membership_rig import CONFIG, HB, ME, STEP, T0, Rig, ev


pytestmark = pytest.mark.timeout(60)


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
