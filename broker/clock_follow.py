"""The broker's physical clock follows the coordinator's, from the servers' heartbeats.

The broker takes no part in Berkeley: it sets its clock by the coordinator's reading
in the coordinator's HB, Cristian's way, with four guards (issue 13: under 20% loss
the broker used to correct its clock 56-165 times, by up to -877 ms):

* **Only the highest epoch.** It remembers the highest epoch any server's status row
  reported, and follows only the HBs of the server that is coordinator of that epoch
  (its own row says so, and the epoch ends in its id: ``term * 100 + id``). A deposed
  coordinator that has not heard yet, or one elected in a minority at a lower epoch,
  is ignored (one line per server and epoch). An epoch no server has reported for
  ``server_timeout`` is forgotten (every server restarted and began again at term 1);
  one ``EPOCH_LEAD`` above the highest is not believed, as in the election.
* **The round trip, measured.** Each broker HB carries ``stamp``, the broker's
  monotonic clock as it sent it; every server echoes the last stamp it got in its
  own next HB (``echo``), with the seconds it held it (``held``). The round trip is
  ``now - echo - held``, and the coordinator's clock now is ``clock + rtt/2``.
* **Slow readings discarded.** A reading whose round trip is far above the best of
  the last ``RTT_WINDOW`` round trips measured is not used, by Berkeley's rule
  (``servers/berkeley.rtt_limit``: over 4 times the best, at least 2 ms, and anything
  over ``berkeley_max_rtt``, 20 ms): a reading's error is up to half its round trip,
  and under loss the slow ones waited for a retransmission, one way or the other.
  Nor is one without an echo or with an impossible one (a negative round trip).
  Discarded readings are counted and said at most once a second.
* **Bounded steps.** The broker corrects only when off by more than
  ``clock_tolerance`` (5 ms), and then by at most ``clock_step`` (50 ms) per
  heartbeat, so that no single reading can throw it far. The first reading it
  follows sets it in full (a broker started seconds off would otherwise take minutes
  to come in); that reading passed the same round-trip bound.

Pure logic: no sockets, no threads. ``now`` is the broker's ``time.monotonic()``
when the HB arrived.
"""
from __future__ import annotations

from collections import deque

from common import log_lines as LL
from common import protocol as P
from common.config import Config
from common.log import ProcessLog
from servers.berkeley import rtt_limit
from servers.election import EPOCH_LEAD, EPOCH_STRIDE

REPORT_EVERY = 1.0
"""Seconds between two log lines about discarded readings."""
RTT_WINDOW = 20
"""Round trips (of the coordinator followed, one per heartbeat: 5 s) whose best sets
the limit of the next reading's."""


class ClockFollower:
    """The broker's clock-following role: the epoch it follows, and its corrections."""

    def __init__(self, config: Config, clock, log: ProcessLog | None) -> None:
        self.config = config
        self.clock = clock                   # a PhysicalClock: now(), adjust()
        self._log = log
        self.epoch = 0                       # the highest epoch heard of
        self._epoch_heard = float("-inf")    # monotonic: last HB reporting it
        self._ignored: set[tuple[int, int]] = set()   # (server, epoch) said once
        self.synced = False
        self.corrections = 0
        self.discarded = 0                   # slow or unusable readings, in all
        self._unreported = 0                 # discarded since the last line about it
        self._reported_at = float("-inf")
        self._last_rtt: float | None = None
        self._rtts: deque[float] = deque(maxlen=RTT_WINDOW)   # the coordinator followed's

    def heartbeat(self, now: float) -> P.Heartbeat:
        """The broker's HB to a server: its send time, for the server to echo."""
        return P.Heartbeat(stamp=now)

    def on_HB(self, server_id: int, msg: P.Heartbeat, now: float) -> None:
        """A server's HB (its status row checked by the broker): follow it if it is
        the coordinator of the highest epoch and its reading is good."""
        status = msg.status
        if status is None:
            return
        if not self._current(status.epoch, now):
            if status.coordinator == server_id and (server_id, status.epoch) not in self._ignored:
                self._ignored.add((server_id, status.epoch))
                self._note(f"ignoring the clock of server-{server_id}: coordinator of epoch "
                           f"{status.epoch}, below epoch {self.epoch}")
            return
        if status.coordinator != server_id or status.epoch % EPOCH_STRIDE != server_id \
                or msg.clock is None:
            return
        rtt = None if msg.echo is None or msg.held is None else now - msg.echo - msg.held
        if rtt is None or rtt < 0.0:
            self._discard(server_id, rtt, now)
            return
        self._rtts.append(rtt)
        limit = rtt_limit(min(self._rtts), self.config)
        if rtt > limit:
            self._discard(server_id, rtt, now, limit)
            return
        self._follow(server_id, status.epoch, msg.clock + rtt / 2, rtt)

    # --- the epoch ---------------------------------------------------------------------
    def _current(self, epoch: int, now: float) -> bool:
        """Whether ``epoch`` is the highest heard of (taking it if it is new, or if the
        highest has not been reported for ``server_timeout``)."""
        forgotten = now - self._epoch_heard > self.config.server_timeout
        if self.epoch and epoch > self.epoch + EPOCH_LEAD:
            return False                     # not believed, as the servers' Bully does
        if epoch > self.epoch or (forgotten and epoch != self.epoch):
            why = (f", epoch {self.epoch} unheard for {self.config.server_timeout * 1000:.0f} ms"
                   if epoch < self.epoch else "")
            self._note(f"clock: following the coordinator of epoch {epoch} "
                       f"(server-{epoch % EPOCH_STRIDE}){why}")
            self.epoch = epoch
            self._ignored.clear()
            self._rtts.clear()                # another coordinator, another path
        if epoch == self.epoch:
            self._epoch_heard = now
            return True
        return False

    # --- readings --------------------------------------------------------------------
    def _discard(self, server_id: int, rtt: float | None, now: float,
                 limit: float | None = None) -> None:
        self.discarded += 1
        self._unreported += 1
        if rtt is not None:
            self._last_rtt = rtt
        if now - self._reported_at < REPORT_EVERY:
            return
        last = f"the last {self._last_rtt * 1000:.1f} ms" if self._last_rtt is not None \
            else "no echo of my heartbeat yet"
        bound = self.config.berkeley_max_rtt if limit is None else limit
        self._note(f"clock: {self._unreported} reading(s) of server-{server_id} not used: "
                   f"round trip unknown or over {bound * 1000:.1f} ms ({last})")
        self._unreported = 0
        self._reported_at = now

    def _follow(self, server_id: int, epoch: int, estimate: float, rtt: float) -> None:
        off = estimate - self.clock.now()
        source = f"server-{server_id} (coordinator, epoch {epoch}, rtt {rtt * 1000:.1f} ms)"
        if not self.synced:
            self.synced = True
            self.clock.adjust(off)
            self.corrections += 1
            self._note(LL.CLOCK_SET.format(step_ms=f"{off * 1000:+.1f}", source=source))
            return
        if abs(off) <= self.config.clock_tolerance:
            return
        step = max(-self.config.clock_step, min(self.config.clock_step, off))
        self.clock.adjust(step)
        self.corrections += 1
        self._note(LL.CLOCK_CORRECTED.format(step_ms=f"{step * 1000:+.1f}",
                                             off_ms=f"{off * 1000:+.1f}", source=source))

    def _note(self, what: str) -> None:
        if self._log is not None:
            self._log.note(what)
