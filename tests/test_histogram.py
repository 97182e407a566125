"""The replication-lag histogram and the origin's lag meter (no processes)."""
from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common import protocol as P
from common.histogram import BOUNDS_MS, SIZE, Histogram
from servers.replication_lag import ReplicationLag

pytestmark = pytest.mark.timeout(60)

IN_RANGE = st.floats(min_value=0.0, max_value=BOUNDS_MS[-1], allow_nan=False)


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


@given(st.lists(IN_RANGE, min_size=1, max_size=200), st.sampled_from([1, 50, 90, 99, 100]))
def test_a_percentile_is_the_bound_of_the_true_value_s_bucket(values, q):
    hist = Histogram()
    for v in values:
        hist.record(v)
    true = nearest_rank(values, q)
    got = hist.percentile(q)
    assert got >= true                                    # never better than it was
    assert got <= max(BOUNDS_MS[0], true * 1.25 + 0.001)  # and at most one bucket worse


@given(st.lists(IN_RANGE, max_size=50), st.lists(IN_RANGE, max_size=50))
def test_the_difference_of_two_readings_is_what_happened_in_between(first, then):
    hist = Histogram()
    for v in first:
        hist.record(v)
    earlier = Histogram(hist.counts)
    for v in then:
        hist.record(v)
    between = Histogram()
    for v in then:
        between.record(v)
    assert hist.minus(earlier).counts == between.counts
    assert earlier.plus(between).counts == hist.counts


def test_values_above_the_last_bound_are_counted_as_infinite():
    hist = Histogram()
    hist.record(BOUNDS_MS[-1] * 10)
    assert hist.total == 1 and hist.percentile(50) == math.inf


def test_an_empty_histogram_has_no_percentiles():
    assert math.isnan(Histogram().percentile(99)) and Histogram().summary() == "n=0"


@pytest.mark.parametrize("raw", [None, "x", [], [0] * (SIZE - 1), [0] * (SIZE + 1),
                                 [-1] + [0] * (SIZE - 1), [True] + [0] * (SIZE - 1),
                                 [0.5] + [0] * (SIZE - 1), {"a": 1}])
def test_a_malformed_status_field_is_not_a_histogram(raw):
    assert Histogram.parse(raw) is None


def test_a_well_formed_status_field_round_trips():
    hist = Histogram()
    hist.record(0.2)
    hist.record(3.0)
    again = Histogram.parse(list(hist.counts))
    assert again is not None and again.counts == hist.counts
    assert again.summary() == f"n=2 p50<={hist.percentile(50):g}ms p99<={hist.percentile(99):g}ms"


def _event(origin: int, seq: int) -> P.Event:
    return P.Event(id=f"e{origin}-{seq}", kind="post", user="alice", lamport=seq, ts=1.0,
                   origin=origin, seq=seq, data=P.EventData(text="x"))


def test_the_lag_of_each_own_write_is_counted_once_when_everyone_holds_it():
    lag = ReplicationLag(my_id=2)
    lag.answered(_event(2, 1), now=10.000)
    lag.answered(_event(2, 2), now=10.001)
    lag.answered(_event(2, 1), now=10.002)    # a retry answered again: not a new write
    lag.answered(_event(3, 7), now=10.002)    # a retry of another origin's write: not mine
    lag.held_everywhere(0, now=10.003)
    assert lag.hist.total == 0
    lag.held_everywhere(1, now=10.004)        # seq 1 everywhere 4 ms after its answer
    assert lag.hist.total == 1 and 4.0 <= lag.hist.percentile(100) <= 5.0
    lag.held_everywhere(2, now=10.011)        # seq 2: 10 ms
    assert lag.hist.total == 2 and 10.0 <= lag.hist.percentile(100) <= 12.5
    lag.held_everywhere(2, now=11.0)          # nothing left to count
    assert lag.hist.total == 2 and not lag.pending
