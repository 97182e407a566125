"""Berkeley clock synchronization, driven in one process over a fake bus: rounds
(clocks agree after one, outliers left out of the average but brought in, round
trips compensated by half), fencing by epoch, and the fault-tolerant average.

The fake bus and clocks are in tests/clock_rig.py.
"""
from __future__ import annotations

import json
import re
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import protocol as P
from servers.berkeley import fault_tolerant_average
from tests.clock_rig import CONFIG, SLOW_LINKS, STEP, ClockCluster, rounds_opened, sent_of


pytestmark = pytest.mark.timeout(30)


# --- rounds -----------------------------------------------------------------------------
def test_five_clocks_within_a_second_agree_within_5ms_after_one_round():
    cluster = ClockCluster({1: 0.3, 2: -1.0, 3: -0.4, 4: 0.6, 5: 0.95})
    assert cluster.spread() > 1.9
    cluster.one_round()
    assert cluster.spread() < 0.005
    assert cluster.coordinator.sync.rounds == 1
    assert all(node.sync.synced for node in cluster.nodes.values())
    # no two clocks within berkeley_outlier_s of each other: all go to the median's, s1's
    assert cluster.nodes[2].sync.offset_ms == pytest.approx(-1300, abs=5)
    assert cluster.coordinator.log.has("berkeley round 1 (epoch 101): readings s1=+0.0ms")
    adjusted = next(line for line in cluster.nodes[2].log.lines if "clock adjusted" in line)
    assert float(adjusted.split()[3]) == pytest.approx(+1300, abs=5)   # "... by +1299.998 ms"


def test_outlier_is_left_out_of_the_average_but_still_brought_in():
    cluster = ClockCluster({1: 0.0, 2: 0.010, 3: -0.010, 4: 0.005, 5: 30.0})
    cluster.one_round()
    assert cluster.spread() < 0.005
    average_of_the_good = statistics.fmean([0.0, 0.010, -0.010, 0.005])
    assert cluster.nodes[5].clock.skew() == pytest.approx(average_of_the_good, abs=0.005)
    round_line = next(line for line in cluster.coordinator.log.lines if "berkeley" in line)
    excluded = re.search(r"excluded=\[s5 ([-+.\d]+)ms\]", round_line)
    correction = re.search(r"corrections .*s5=([-+.\d]+)ms", round_line)
    assert float(excluded[1]) == pytest.approx(30_000, abs=5)
    assert float(correction[1]) == pytest.approx(-30_000 + 1.25, abs=1)


def test_round_trip_is_compensated_by_half():
    cluster = ClockCluster({1: 0.0, 2: 0.5, 3: -0.7}, latency=0.05, simulated=True,
                           config=SLOW_LINKS)
    cluster.one_round()
    assert cluster.spread() < 1e-6
    assert cluster.coordinator.log.has("(rtt 100.0ms)")


def test_a_late_reply_misses_its_round_and_gets_no_correction():
    cluster = ClockCluster({1: 0.0, 2: 0.5}, latency=CONFIG.berkeley_reply_window, simulated=True)
    cluster.one_round()
    assert not cluster.nodes[2].sync.synced
    assert sent_of(cluster, P.TIME_ADJUST)[0].corrections == {}


def test_rounds_repeat_every_interval_and_on_request():
    cluster = ClockCluster({1: 0.0, 2: 0.1})
    cluster.run(CONFIG.berkeley_interval - 0.1)
    assert len(rounds_opened(cluster)) == 1
    cluster.run(0.2)
    assert len(rounds_opened(cluster)) == 2
    cluster.coordinator.sync.request_round()               # a server joined
    cluster.one_round()
    assert len(rounds_opened(cluster)) == 3
    next_round = cluster.coordinator.sync.next_deadline()
    assert cluster.now < next_round <= cluster.now + CONFIG.berkeley_interval

def test_a_new_term_starts_a_round_at_once_and_a_deposed_coordinator_drops_its_round():
    cluster = ClockCluster({1: 0.0, 2: 0.4, 3: 0.8})
    cluster.run(STEP)
    cluster.coordinator.term.is_coordinator = False        # deposed mid-round
    cluster.one_round()
    assert sent_of(cluster, P.TIME_ADJUST) == []
    assert cluster.coordinator.sync.next_deadline() is None
    new = cluster.nodes[3]
    for node in cluster.nodes.values():
        node.term.epoch, node.term.coordinator = 203, 3
    new.term.is_coordinator = True
    assert new.sync.next_deadline() == 0.0                  # overdue: tick now
    cluster.one_round()
    assert [q.epoch for q in rounds_opened(cluster)] == [101, 203]
    assert cluster.spread() < 0.005


# --- fencing ----------------------------------------------------------------------------------
def test_stale_epoch_time_query_and_time_adjust_are_ignored():
    cluster = ClockCluster({1: 0.0, 2: 0.5})
    follower = cluster.nodes[2]
    follower.term.epoch, follower.term.coordinator = 503, 3
    before = follower.clock.skew()
    follower.sync.on_TIME_QUERY(P.TimeQuery(sender=1, epoch=401, round=1, probe=0), cluster.now)
    follower.sync.on_TIME_ADJUST(P.TimeAdjust(sender=1, epoch=401, round=1,
                                              corrections={2: -0.5}), cluster.now)
    assert sent_of(cluster, P.TIME_REPLY) == []
    assert follower.clock.skew() == pytest.approx(before, abs=0.001)
    assert not follower.sync.synced and follower.sync.offset_ms is None
    assert follower.log.has("ignored stale TIME_QUERY from s1: epoch 401 < mine 503")
    assert follower.log.has("ignored stale TIME_ADJUST from s1: epoch 401 < mine 503")


def test_orders_from_a_newer_epoch_are_obeyed_before_its_coordinator_is_known():
    cluster = ClockCluster({1: 0.0, 2: 0.5})
    follower = cluster.nodes[2]
    follower.term.epoch, follower.term.coordinator = 503, 3
    follower.sync.on_TIME_QUERY(P.TimeQuery(sender=1, epoch=601, round=7, probe=0), cluster.now)
    assert sent_of(cluster, P.TIME_REPLY)[0].round == 7
    follower.sync.on_TIME_ADJUST(P.TimeAdjust(sender=1, epoch=601, round=7,
                                              corrections={2: -0.5}), cluster.now)
    assert follower.sync.synced and follower.clock.skew() == pytest.approx(0.0, abs=0.001)
    assert follower.sync.offset_ms == pytest.approx(500.0)
    assert follower.log.has("clock adjusted by -500.000 ms (round 7, coordinator s1)")


def time_adjust_frames(corrections: str) -> list[bytes]:
    """A TIME_ADJUST from s1 in its own epoch, its ``corrections`` as raw JSON text."""
    body = '{"from": 1, "epoch": 101, "round": 1, "corrections": %s}' % corrections
    return [P.TIME_ADJUST.encode(), b"1", body.encode()]


@pytest.mark.parametrize("corrections", ['{"2": "soon"}', '{"2": true}', '{"2": null}',
                                         '{"2": [1]}', '{"2": NaN}', '{"2": Infinity}',
                                         '{"2": 1e999}', '{"2": 1e7}', '{"two": -0.5}',
                                         '{"0": -0.5}', '{"100": -0.5}'])
def test_a_correction_that_is_not_a_number_is_refused(corrections):
    """Refused on the wire: the handler never runs, the clock does not move."""
    cluster = ClockCluster({1: 0.0, 2: 0.5})
    follower = cluster.nodes[2]
    before = follower.clock.skew()
    cluster.receive(2, time_adjust_frames(corrections))
    assert not follower.sync.synced and follower.sync.offset_ms is None
    assert follower.clock.skew() == before
    assert follower.log.has("dropped a bad bus message: TIME_ADJUST")


def test_a_correction_that_is_a_number_comes_through_the_same_path():
    cluster = ClockCluster({1: 0.0, 2: 0.5})
    cluster.receive(2, time_adjust_frames(json.dumps({"2": -0.5})))
    assert cluster.nodes[2].sync.synced
    assert cluster.nodes[2].clock.skew() == pytest.approx(0.0, abs=1e-9)


# --- the fault-tolerant average --------------------------------------------------------------
def test_average_of_an_even_split_is_never_empty():
    avg = fault_tolerant_average({1: 0.0, 2: 30.0}, outlier_s=2.5)
    assert avg.accepted == {1} and avg.value == 0.0


GOOD = st.floats(-1.0, 1.0)
OUTLIER = st.one_of(st.floats(-100.0, -5.0), st.floats(5.0, 100.0))


@settings(max_examples=60, deadline=None)
@given(st.lists(GOOD, min_size=2, max_size=7), st.data())
def test_any_clocks_within_a_second_and_a_minority_of_outliers_converge(good, data):
    outliers = data.draw(st.lists(OUTLIER, max_size=len(good) - 1))     # a minority
    offsets = good + outliers
    coordinator = data.draw(st.integers(1, len(offsets)))
    cluster = ClockCluster(dict(enumerate(offsets, start=1)), coordinator=coordinator,
                           simulated=True)                 # deterministic: no real time
    cluster.one_round()
    assert cluster.spread() < 1e-6
    common = cluster.nodes[1].clock.skew()
    assert min(good) - 1e-6 <= common <= max(good) + 1e-6
