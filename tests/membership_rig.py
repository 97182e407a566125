"""What the membership unit tests (tests/test_membership_*unit.py) share: one
Membership driven in one process with a fake monotonic clock (``Rig``).

Every callback the server would give is a recorder here: what goes on the bus and
to the broker is checked to be valid on the wire (``protocol.validate``) and kept.
Time advances in steps of 1/64 s, exact in binary, so heartbeat arithmetic is exact.
"""
from __future__ import annotations

from common import protocol as P
from common.config import Config
from servers.catchup import CatchUp
from servers.membership import Membership
from servers.peers import SERVING, Peers
from servers.state import SocialState
from tests.fakes import TalkLog


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
