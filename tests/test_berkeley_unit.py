"""Berkeley clock synchronization, driven in one process over a fake bus.

The election is a stub (who coordinates which epoch is the Bully's job, tested
elsewhere). The bus delivers every message to every node, its sender included,
after ``latency`` simulated seconds; the coordinator ticks every STEP. Messages
travel as real frames: encoded with the sender's Lamport stamp and decoded as a
server's SUB socket decodes them (``protocol.BUS``), so every message Berkeley
sends must be valid on the wire.
"""
from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import protocol as P
from common.clock import LamportClock, PhysicalClock
from common.config import Config
from servers.berkeley import BerkeleySync, fault_tolerant_average
from tests.fakes import NoteLog

pytestmark = pytest.mark.timeout(30)

CONFIG = Config().validate()
STEP = 0.01


@dataclass
class Term:
    """Stands in for Bully: what BerkeleySync reads from the election."""
    is_coordinator: bool = False
    epoch: int = 101
    coordinator: int | None = 1



class SimulatedClock:
    """A PhysicalClock whose time runs on the simulation's monotonic clock."""

    def __init__(self, cluster: "ClockCluster", offset: float) -> None:
        self._cluster, self._offset = cluster, offset

    def now(self) -> float:
        return 1.7e9 + self._cluster.now + self._offset

    def adjust(self, delta: float) -> None:
        self._offset += delta

    def skew(self) -> float:
        return self._offset


class ClockNode:
    def __init__(self, sid: int, clock, cluster: "ClockCluster", coordinator: int) -> None:
        self.id, self.clock, self.log = sid, clock, NoteLog()
        self.lamport = LamportClock()
        self.term = Term(is_coordinator=sid == coordinator, epoch=100 + coordinator,
                         coordinator=coordinator)
        self.sync = BerkeleySync(sid, CONFIG, clock, cluster.publish, self.log, self.term)


class ClockCluster:
    def __init__(self, offsets: dict[int, float], coordinator: int = 1,
                 latency: float = 0.0, simulated: bool = True) -> None:
        self.now, self.latency = 500.0, latency
        self.queue: list[tuple[float, int, P.Incoming]] = []
        self.sent: list = []
        self.nodes = {sid: ClockNode(sid, self._clock(offset, simulated), self, coordinator)
                      for sid, offset in offsets.items()}
        self.coordinator = self.nodes[coordinator]

    def _clock(self, offset: float, simulated: bool):
        return SimulatedClock(self, offset) if simulated else PhysicalClock(offset=offset)

    def publish(self, msg) -> None:
        """PUB: stamp and encode once; every node's SUB decodes the same frames."""
        frames = P.encode(msg, self.nodes[msg.sender].lamport.tick())
        incoming = P.decode(frames, P.BUS)
        assert incoming.msg == msg, f"{msg!r} does not survive the wire: {incoming.msg!r}"
        self.sent.append(incoming.msg)
        for sid in self.nodes:
            self.queue.append((self.now + self.latency, sid, incoming))

    def deliver_due(self) -> None:
        while due := [m for m in self.queue if m[0] <= self.now + 1e-9]:
            for message in due:
                self.queue.remove(message)
                self.dispatch(*message[1:])

    def receive(self, sid: int, frames: list[bytes]) -> None:
        """Frames from anyone reach node ``sid``'s SUB: a bad message is dropped."""
        try:
            incoming = P.decode(frames, P.BUS)
        except P.ProtocolError as exc:
            self.nodes[sid].log.note(f"dropped a bad bus message: {exc}")
            return
        self.dispatch(sid, incoming)

    def dispatch(self, sid: int, incoming: P.Incoming) -> None:
        """What servers/node.py does with a clock message."""
        node = self.nodes[sid]
        node.lamport.merge(incoming.lamport)
        sync, msg = node.sync, incoming.msg
        handler = {P.TIME_QUERY: sync.on_TIME_QUERY,
                   P.TIME_REPLY: sync.on_TIME_REPLY,
                   P.TIME_ADJUST: sync.on_TIME_ADJUST}[msg.TYPE]
        handler(msg, self.now)

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now += STEP
            self.deliver_due()
            for node in self.nodes.values():
                node.sync.tick(self.now)
            self.deliver_due()

    def one_round(self) -> None:
        self.run(CONFIG.berkeley_reply_window + 2 * self.latency + 2 * STEP)

    def times(self) -> list[float]:
        return [node.clock.now() for node in self.nodes.values()]

    def spread(self) -> float:
        times = self.times()
        return max(times) - min(times)


def sent_of(cluster: ClockCluster, msg_type: str) -> list:
    return [msg for msg in cluster.sent if msg.TYPE == msg_type]


def rounds_opened(cluster: ClockCluster) -> list[P.TimeQuery]:
    """The first TIME_QUERY of each round (a round sends berkeley_probes of them)."""
    return [q for q in sent_of(cluster, P.TIME_QUERY) if q.probe == 0]


# --- rounds -----------------------------------------------------------------------------
def test_five_clocks_within_a_second_agree_within_5ms_after_one_round():
    cluster = ClockCluster({1: 0.3, 2: -1.0, 3: -0.4, 4: 0.6, 5: 0.95})
    assert cluster.spread() > 1.9
    cluster.one_round()
    assert cluster.spread() < 0.005
    assert cluster.coordinator.sync.rounds == 1
    assert all(node.sync.synced for node in cluster.nodes.values())
    assert cluster.nodes[2].sync.offset_ms == pytest.approx(-1000 - 90, abs=5)
    assert cluster.coordinator.log.has("berkeley round 1 (epoch 101): readings s1=+0.0ms")
    adjusted = next(line for line in cluster.nodes[2].log.lines if "clock adjusted" in line)
    assert float(adjusted.split()[3]) == pytest.approx(+1090, abs=5)   # "... by +1089.998 ms"


def test_outlier_is_left_out_of_the_average_but_still_brought_in():
    cluster = ClockCluster({1: 0.0, 2: 0.2, 3: -0.2, 4: 0.1, 5: 30.0})
    cluster.one_round()
    assert cluster.spread() < 0.005
    average_of_the_good = statistics.fmean([0.0, 0.2, -0.2, 0.1])
    assert cluster.nodes[5].clock.skew() == pytest.approx(average_of_the_good, abs=0.005)
    round_line = next(line for line in cluster.coordinator.log.lines if "berkeley" in line)
    excluded = re.search(r"excluded=\[s5 ([-+.\d]+)ms\]", round_line)
    correction = re.search(r"corrections .*s5=([-+.\d]+)ms", round_line)
    assert float(excluded[1]) == pytest.approx(30_000, abs=5)
    assert float(correction[1]) == pytest.approx(-30_000 + 25, abs=5)


def test_round_trip_is_compensated_by_half():
    cluster = ClockCluster({1: 0.0, 2: 0.5, 3: -0.7}, latency=0.05, simulated=True)
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
