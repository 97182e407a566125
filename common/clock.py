"""The two clocks every process keeps: a Lamport clock and a physical clock.

Timeouts never use either of them: they use ``time.monotonic()``.
"""
from __future__ import annotations

import time


class LamportClock:
    """Lamport's logical clock: tick on every send, merge on every receive."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def tick(self) -> int:
        """Rule 1: increment before each local event or send; returns the stamp."""
        self.value += 1
        return self.value

    def merge(self, received: int) -> int:
        """Rule 2: on receive, take max(local, received) + 1."""
        if received > self.value:
            self.value = received
        self.value += 1
        return self.value


class PhysicalClock:
    """The host clock plus this process's own offset, drift and chaos.

    ``now()`` is what the process believes the time is: every timestamp in
    posts, messages and logs comes from it. ``adjust()`` applies a correction
    from Berkeley (servers) or Cristian (users). ``stamp()`` never returns a
    time earlier than one it returned before, even after a backward correction.
    """

    def __init__(self, offset: float = 0.0, drift_ppm: float = 0.0,
                 chaos: bool = False, chaos_max: float = 1.0,
                 chaos_interval: tuple[float, float] = (2.0, 6.0),
                 rng: random.Random | None = None) -> None:
        self._offset = offset
        self._drift = drift_ppm / 1e6
        self._start_host = time.time()
        self._start_mono = time.monotonic()
        self._chaos = chaos
        self._chaos_max = chaos_max
        self._chaos_interval = chaos_interval
        if rng is None and chaos:
            import random        # here: only chaos draws, and a user's command has none
            rng = random.Random()
        self._rng = rng
        self._next_jump = self._start_mono + self._draw_interval() if chaos else float("inf")
        self._last_stamp = 0.0
        self.jumps = 0
        self.last_jump = 0.0
        self.on_jump = None
        """Called with each chaos jump (seconds): a process's log says it (common/log.py)."""

    def _draw_interval(self) -> float:
        return self._rng.uniform(*self._chaos_interval)

    def _maybe_jump(self, mono: float) -> None:
        if mono < self._next_jump:
            return
        jump = self._rng.uniform(-self._chaos_max, self._chaos_max)
        self._offset += jump
        self.jumps += 1
        self.last_jump = jump
        self._next_jump = mono + self._draw_interval()
        told, self.on_jump = self.on_jump, None      # its log line reads this clock again
        if told is not None:
            try:
                told(jump)
            finally:
                self.on_jump = told

    def now(self) -> float:
        mono = time.monotonic()
        self._maybe_jump(mono)
        elapsed = mono - self._start_mono
        return self._start_host + elapsed * (1.0 + self._drift) + self._offset

    def stamp(self) -> float:
        """A timestamp for a post, message or log line: never goes backwards."""
        t = self.now()
        if t <= self._last_stamp:
            t = self._last_stamp + 1e-6
        self._last_stamp = t
        return t

    def adjust(self, delta: float) -> None:
        """Apply a correction of ``delta`` seconds (positive: forward)."""
        self._offset += delta

    def skew(self) -> float:
        """This clock minus the host clock, in seconds: the ground truth on one machine."""
        return self.now() - time.time()


def cristian(clock: PhysicalClock, server_time: float, rtt: float) -> float:
    """Cristian's algorithm, for a reply whose server read its clock (``server_time``)
    as it answered: the time now lies within [server_time, server_time + rtt]; take
    the middle. A clock already inside that interval is left alone (the estimate is
    no better than it). Returns the correction applied, 0.0 for none."""
    now = clock.now()
    if server_time <= now <= server_time + rtt:
        return 0.0
    delta = server_time + rtt / 2 - now
    clock.adjust(delta)
    return delta
