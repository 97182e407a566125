"""The broker's clock follower (broker/clock_follow.py), without sockets.

The broker's clock is a fake one; every heartbeat goes through the wire as the
broker's backend decodes it (``protocol.SERVER_TO_BROKER``), and the broker's own HB
as a server's DEALER decodes it. Round trips are set by hand: ``hb(..., rtt=...)``
builds the echo of a stamp sent ``rtt + held`` seconds before ``NOW``. Epochs read
``term * 100 + id``: 305 is term 3, claimed by server 5.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.clock_follow import REPORT_EVERY, ClockFollower
from common import protocol as P
from common.config import Config
from tests.fakes import NoteLog

pytestmark = pytest.mark.timeout(30)

CONFIG = Config().validate()
NOW = 1000.0
TRUE = 1.7e9            # the coordinator's clock at NOW
HELD = 0.1              # how long the server held the broker's stamp


class FakeClock:
    """The broker's PhysicalClock: ``offset`` from the coordinator's time at NOW."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def now(self) -> float:
        return TRUE + self.offset

    def adjust(self, delta: float) -> None:
        self.offset += delta


def row(sid: int, epoch: int, coordinator: int | None) -> P.ServerStatus:
    return P.ServerStatus(id=sid, phase="serving", events=0, digest="", lamport=1, vv={},
                          coordinator=coordinator, epoch=epoch, clock_offset_ms=None,
                          clock_skew_ms=0.0, last_sync=None, under_replicated=0,
                          repl_lag_hist=[], peers=[])


def hb(sid: int, epoch: int, coordinator: int | None = None, *, rtt: float | None = 0.001,
       clock_error: float = 0.0, at: float = NOW) -> P.Heartbeat:
    """Server ``sid``'s HB arriving at ``at``, its clock read ``rtt/2`` before (so it
    shows TRUE - rtt/2, plus ``clock_error``), as the broker's backend decodes it."""
    coordinator = sid if coordinator is None else coordinator
    echo = {} if rtt is None else {"echo": at - rtt - HELD, "held": HELD}
    msg = P.Heartbeat(id=sid, clock=TRUE - (rtt or 0.0) / 2 + clock_error,
                      status=row(sid, epoch, coordinator), **echo)
    incoming = P.decode([b"server-%d.x" % sid, b""] + P.encode(msg, 7), P.SERVER_TO_BROKER)
    assert incoming.msg == msg
    return incoming.msg


def follower(offset: float, synced: bool = True) -> tuple[ClockFollower, FakeClock, NoteLog]:
    clock, log = FakeClock(offset), NoteLog()
    f = ClockFollower(CONFIG, clock, log)
    f.synced = synced
    return f, clock, log


def test_the_brokers_heartbeat_carries_its_send_time_and_survives_the_wire():
    f, _, _ = follower(0.0)
    msg = f.heartbeat(NOW)
    assert P.decode([b""] + P.encode(msg, 3), P.BROKER_TO_SERVER).msg == P.Heartbeat(stamp=NOW)


def test_round_trip_is_compensated_by_half():
    f, clock, log = follower(-0.008)
    f.on_HB(5, hb(5, 305, rtt=0.008), NOW)        # clock shows TRUE - 4 ms
    assert clock.offset == pytest.approx(0.0, abs=1e-6)     # 1.7e9 s: 0.24 us per ulp
    assert log.has("clock corrected by +8.0 ms (it was +8.0 ms off) from server-5 "
                   "(coordinator, epoch 305, rtt 8.0 ms)")


def test_within_the_tolerance_nothing_is_corrected():
    f, clock, log = follower(0.004)
    f.on_HB(5, hb(5, 305), NOW)
    assert clock.offset == 0.004 and f.corrections == 0
    assert not log.has("clock corrected")


def test_a_large_offset_is_corrected_by_bounded_steps_one_line_each():
    f, clock, log = follower(-0.877)
    offsets = []
    for _ in range(20):
        f.on_HB(5, hb(5, 305), NOW)
        offsets.append(clock.offset)
    steps = [b - a for a, b in zip([-0.877] + offsets, offsets)]
    assert all(abs(s) <= CONFIG.clock_step + 1e-12 for s in steps)
    assert steps[0] == pytest.approx(CONFIG.clock_step)
    assert abs(clock.offset) <= CONFIG.clock_tolerance
    assert sum(1 for line in log.lines if "clock corrected" in line) == f.corrections == 18
    assert log.lines[1] == ("clock corrected by +50.0 ms (it was +877.0 ms off) from server-5 "
                            "(coordinator, epoch 305, rtt 1.0 ms)")


def test_the_first_reading_sets_the_clock_in_full():
    f, clock, log = follower(30.0, synced=False)
    f.on_HB(5, hb(5, 305, rtt=0.004), NOW)
    assert clock.offset == pytest.approx(0.0, abs=1e-6) and f.synced
    assert log.has("clock set by -30000.0 ms from server-5 (coordinator, epoch 305, rtt 4.0 ms)")
    clock.offset = 0.5                                   # then only by steps
    f.on_HB(5, hb(5, 305), NOW)
    assert clock.offset == pytest.approx(0.5 - CONFIG.clock_step)


@pytest.mark.parametrize("rtt", [0.021, 0.25, 0.877])
def test_a_reading_with_a_long_round_trip_is_not_used(rtt):
    f, clock, log = follower(-0.3, synced=False)
    f.on_HB(5, hb(5, 305, rtt=rtt, clock_error=-0.4), NOW)
    assert clock.offset == -0.3 and not f.synced and f.discarded == 1
    assert log.has(f"clock: 1 reading(s) of server-5 not used: round trip unknown or over "
                   f"{CONFIG.berkeley_max_rtt * 1000:.1f} ms (the last {rtt * 1000:.1f} ms)")


def test_a_reading_far_above_the_recent_best_round_trip_is_not_used_under_the_bound():
    """Round trips of 1 ms, then one of 8 ms (a retransmission on one way): over 4 x
    the best of the window, though under the 20 ms bound; its error could be 4 ms."""
    f, clock, log = follower(0.0)
    for _ in range(3):
        f.on_HB(5, hb(5, 305, rtt=0.001), NOW)
    f.on_HB(5, hb(5, 305, rtt=0.008, clock_error=0.004), NOW)
    assert clock.offset == 0.0 and f.discarded == 1
    assert log.has("clock: 1 reading(s) of server-5 not used: round trip unknown or over "
                   "4.0 ms (the last 8.0 ms)")
    f.on_HB(5, hb(5, 305, rtt=0.003, clock_error=0.007), NOW)     # within 4 x 1 ms: used
    assert clock.offset == pytest.approx(0.007, abs=1e-6)


def test_a_reading_without_an_echo_or_with_an_impossible_one_is_not_used():
    f, clock, _ = follower(-0.3)
    f.on_HB(5, hb(5, 305, rtt=None), NOW)                 # no echo yet
    f.on_HB(5, hb(5, 305, rtt=-0.05), NOW)               # an echo from the future
    assert clock.offset == -0.3 and f.discarded == 2


def test_discarded_readings_are_said_at_most_once_a_second():
    f, _, log = follower(0.0)
    for k in range(10):
        f.on_HB(5, hb(5, 305, rtt=0.2), NOW + k * 0.25)
    said = [line for line in log.lines if "not used" in line]
    assert len(said) == 3 and f.discarded == 10          # at 0, 1.0, 2.0 s
    assert said[1].startswith("clock: 4 reading(s) of server-5")
    assert REPORT_EVERY == 1.0


def test_only_the_coordinator_of_the_highest_epoch_is_followed():
    f, clock, log = follower(0.2)
    f.on_HB(5, hb(5, 305), NOW)                            # follows 305
    assert f.epoch == 305 and clock.offset == pytest.approx(0.2 - CONFIG.clock_step)
    before = clock.offset
    f.on_HB(3, hb(3, 203, clock_error=0.5), NOW)           # a deposed coordinator, lower epoch
    f.on_HB(3, hb(3, 203, clock_error=0.5), NOW)
    assert clock.offset == before
    assert sum("ignoring the clock of server-3" in line for line in log.lines) == 1
    assert log.has("ignoring the clock of server-3: coordinator of epoch 203, below epoch 305")
    f.on_HB(2, hb(2, 305, coordinator=5, clock_error=0.5), NOW)   # a follower of 305
    f.on_HB(4, hb(4, 305, coordinator=4, clock_error=0.5), NOW)   # claims 305, not its own
    assert clock.offset == before
    f.on_HB(4, hb(4, 404), NOW)                            # a new term: follow s4
    assert f.epoch == 404 and clock.offset == pytest.approx(before - CONFIG.clock_step)
    assert log.has("clock: following the coordinator of epoch 404 (server-4)")
    f.on_HB(5, hb(5, 305), NOW)                            # the old one, not yet told
    assert log.has("ignoring the clock of server-5: coordinator of epoch 305, below epoch 404")


def test_a_lower_epoch_is_taken_once_the_highest_is_unheard_for_server_timeout():
    f, clock, log = follower(0.0)
    f.on_HB(5, hb(5, 905), NOW)
    clock.offset = 0.1
    later = NOW + CONFIG.server_timeout / 2
    f.on_HB(3, hb(3, 103, at=later), later)                     # still ignored
    assert clock.offset == 0.1
    later = NOW + CONFIG.server_timeout + 0.01
    f.on_HB(3, hb(3, 103, at=later), later)
    assert f.epoch == 103 and clock.offset == pytest.approx(0.1 - CONFIG.clock_step)
    assert log.has("clock: following the coordinator of epoch 103 (server-3), epoch 905 "
                   "unheard for 2000 ms")


@settings(max_examples=80, deadline=None)
@given(offset=st.floats(-1.0, 1.0),
       rtts=st.lists(st.one_of(st.floats(0.0, 0.002), st.floats(0.0, 0.3)),
                     min_size=1, max_size=40),
       data=st.data())
def test_a_correction_is_at_most_a_step_toward_the_reading_and_slow_ones_move_nothing(
        offset, rtts, data):
    """Any mix of round trips, each reading off by up to half its round trip (the
    unknown asymmetry of the two ways): a reading over the bound moves nothing, every
    other moves the clock by at most one step toward it and never past it; and
    enough fast readings bring the clock within the tolerance plus their error."""
    f, clock, _ = follower(offset)
    for rtt in rtts:
        error = data.draw(st.floats(-rtt / 2, rtt / 2))   # the estimate is TRUE + error
        before = clock.offset
        f.on_HB(5, hb(5, 305, rtt=rtt, clock_error=error), NOW)
        assert abs(clock.offset - before) <= CONFIG.clock_step + 1e-6
        if rtt > CONFIG.berkeley_max_rtt:
            assert clock.offset == before
        else:
            assert abs(clock.offset - error) <= abs(before - error) + 1e-6
    if all(r <= CONFIG.berkeley_rtt_floor for r in rtts) and \
            len(rtts) * CONFIG.clock_step >= abs(offset) + CONFIG.berkeley_rtt_floor:
        # every reading used (none is over the floor), each off by at most 1 ms
        assert abs(clock.offset) <= CONFIG.clock_tolerance + CONFIG.berkeley_rtt_floor / 2 + 1e-6


def test_an_epoch_far_above_any_heard_is_not_believed():
    f, clock, _ = follower(0.2)
    f.on_HB(5, hb(5, 305), NOW)
    f.on_HB(7, hb(7, 305 + 10 ** 8 + 2), NOW)          # a forged claim, as Bully refuses it
    assert f.epoch == 305
    f.on_HB(5, hb(5, 305), NOW)                        # still following s5
    assert clock.offset == pytest.approx(0.2 - 2 * CONFIG.clock_step)
