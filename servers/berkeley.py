"""Berkeley clock synchronization among the servers, run by the Bully coordinator.

Gusella and Zatti's algorithm (4.3BSD TEMPO), one round every ``berkeley_interval``:

1. The coordinator asks every server its time: TIME_QUERY.
2. Each server answers with its clock reading: TIME_REPLY.
3. After ``berkeley_reply_window`` the coordinator keeps each server's reading with
   the shortest round trip (of ``berkeley_probes`` queries), and discards the readings
   whose round trip is far above the round's best (``rtt_limit``: they waited for a
   retransmission or in a queue, and a reading's error is up to half its round trip).
   A round left with fewer good readings than a majority of the servers that answered
   it (the coordinator included; never fewer than the coordinator and one more; a
   coordinator nobody answered closes its round alone, as before) is skipped: no
   TIME_ADJUST, one log line with the round trips.
   From the rest it estimates each server's offset from its own clock, compensating
   half the round trip: ``time + rtt/2 - my_clock``.
4. Fault-tolerant average: readings further than ``berkeley_outlier_s`` (20 ms) from the
   median are left out, and the rest (its own offset 0 included) are averaged.
5. Every server with a good reading, left out of the average or not, is sent the
   correction that brings it to that average: ``avg - offset``. The coordinator
   applies its own, ``avg``, locally.

Orders from a coordinator whose epoch is below the receiver's are ignored, so a
deposed coordinator cannot move anyone's clock.

The broker follows the coordinator's clock from its HBs (``broker/clock_follow.py``),
compensating their round trip: every server echoes the ``stamp`` of the broker's last
HB in its own next HB, with how long it held it (``on_HB``, ``echo``).

Pure logic: no sockets, no threads. ``now`` is ``time.monotonic()`` from the server,
taken when the message arrived.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable

import msgspec

from common import log_lines as LL
from common import protocol
from common.clock import PhysicalClock
from common.config import Config
from common.log import ProcessLog
from servers.election import OVERDUE, Bully


@dataclass(frozen=True)
class Average:
    """The fault-tolerant average of one round's offsets (seconds, from the coordinator)."""
    median: float
    accepted: frozenset[int]
    value: float


def fault_tolerant_average(offsets: dict[int, float], outlier_s: float) -> Average:
    """TEMPO: average the offsets within ``outlier_s`` of the median.

    The median is always one of the readings, so the accepted set is never empty; with
    fewer than half the readings faulty, it is a good one. Of an even count's two
    middle readings it is the one nearer the coordinator's own (offset 0): with two
    readings (one server's discarded for its round trip), a clock far off cannot make
    the coordinator the outlier and drag everyone to itself.
    """
    ordered = sorted(offsets.values())
    middle = len(ordered) // 2
    candidates = ordered[middle - 1:middle + 1] if len(ordered) % 2 == 0 else [ordered[middle]]
    median = min(candidates, key=abs)
    accepted = frozenset(sid for sid, off in offsets.items() if abs(off - median) <= outlier_s)
    value = statistics.fmean(offsets[sid] for sid in accepted)
    return Average(median, accepted, value)


def rtt_limit(best_rtt: float, config: Config) -> float:
    """The longest round trip a reading of a round whose shortest is ``best_rtt`` may
    have: ``berkeley_rtt_factor`` times the best, at least ``berkeley_rtt_floor`` (so
    that sub-millisecond jitter on a fast link discards nothing), at most
    ``berkeley_max_rtt`` whatever the best."""
    return min(config.berkeley_max_rtt,
               max(config.berkeley_rtt_factor * best_rtt, config.berkeley_rtt_floor))


def needed(answered: int) -> int:
    """Good readings a round of ``answered`` clocks (the coordinator's own included)
    needs: a majority of them, and at least the coordinator's and one more. A round
    that read no other clock (nobody answered: I am alone) needs only mine, and
    closes as before, adjusting nobody."""
    return 1 if answered == 1 else max(2, answered // 2 + 1)


@dataclass
class Reading:
    time: float        # the server's clock in its TIME_REPLY
    rtt: float         # monotonic seconds from my TIME_QUERY to its reply
    arrived: float     # monotonic, when the reply arrived

    def offset(self, my_clock: float, my_mono: float) -> float:
        """Cristian's estimate: the reply was read half a round trip ago. My clock
        at its arrival is derived from one reading of it (``my_clock`` at
        ``my_mono``), so that a jump of my clock during the round cannot split it."""
        return self.time + self.rtt / 2 - (my_clock - (my_mono - self.arrived))


@dataclass
class Round:
    number: int
    epoch: int
    sent: float        # monotonic
    closes: float      # monotonic
    readings: dict[int, Reading] = field(default_factory=dict)
    probes: list[float] = field(default_factory=list)   # probe number -> monotonic sent


class BerkeleySync:
    """One server's part in Berkeley: a coordinator's rounds, a follower's replies."""

    def __init__(self, my_id: int, config: Config, clock: PhysicalClock,
                 publish: Callable[[object], None], log: ProcessLog | None,
                 election: Bully) -> None:
        self.my_id = my_id
        self.config = config
        self.clock = clock
        self._publish = publish
        self._log = log
        self.election = election
        self._term: int | None = None       # the epoch whose rounds I schedule
        self._open: Round | None = None
        self._next_round = OVERDUE          # monotonic
        self._requested = False
        self._last_number = 0               # of the rounds I opened
        self.rounds = 0                     # rounds I closed as coordinator
        self.skipped = 0                    # of those, skipped: too few good readings
        self.synced = False
        self.last_sync: float | None = None
        self.offset_ms: float | None = None
        self._broker_stamp: tuple[float, float] | None = None   # (its stamp, my monotonic)

    # --- the coordinator's side ----------------------------------------------------
    def request_round(self) -> None:
        """Run a round at the next tick (a joining server must be set before it serves)."""
        self._requested = True

    def next_deadline(self) -> float | None:
        if not self.election.is_coordinator:
            return None
        if self._open is not None:
            return min(self._open.closes, self._next_probe(self._open))
        if self._requested or self._term != self.election.epoch:
            return OVERDUE
        return self._next_round

    def tick(self, now: float) -> None:
        """Close the open round once its window has passed; open one when due.
        Only a coordinator of the current epoch acts."""
        if not self.election.is_coordinator:
            self._term, self._open = None, None
            return
        if self._term != self.election.epoch:        # a new term: first round at once
            self._term, self._open = self.election.epoch, None
            self._next_round = now
        if self._open is not None and now >= self._open.closes:
            self._close_round(self._open, now)
            self._open = None
        if self._open is not None and now >= self._next_probe(self._open):
            self._probe(self._open, now)
        if self._open is None and (self._requested or now >= self._next_round):
            self._open_round(now)

    def on_TIME_REPLY(self, msg: protocol.TimeReply, now: float) -> None:
        """Record a reading for my open round, with its round trip and my clock."""
        r = self._open
        if (r is None or msg.to != self.my_id or msg.round != r.number
                or not 0 <= msg.probe < len(r.probes)):
            return
        reading = Reading(msg.time, now - r.probes[msg.probe], now)
        best = r.readings.get(msg.sender)
        if best is None or reading.rtt < best.rtt:
            r.readings[msg.sender] = reading

    def _open_round(self, now: float) -> None:
        self._last_number += 1
        epoch = self.election.epoch
        self._open = Round(self._last_number, epoch, now, now + self.config.berkeley_reply_window)
        self._next_round = now + self.config.berkeley_interval
        self._requested = False
        self._probe(self._open, now)

    def _next_probe(self, r: Round) -> float:
        if len(r.probes) >= self.config.berkeley_probes:
            return float("inf")
        return r.sent + len(r.probes) * self.config.berkeley_probe_gap

    def _probe(self, r: Round, now: float) -> None:
        self._publish(protocol.TimeQuery(sender=self.my_id, epoch=r.epoch, round=r.number,
                                         probe=len(r.probes)))
        r.probes.append(now)

    def _close_round(self, r: Round, now: float) -> None:
        self.rounds += 1
        limit = rtt_limit(min((rd.rtt for rd in r.readings.values()), default=0.0),
                          self.config)
        good = {sid: rd for sid, rd in r.readings.items() if rd.rtt <= limit}
        slow = {sid: rd.rtt for sid, rd in r.readings.items() if rd.rtt > limit}
        answered = len(r.readings) + 1             # mine included
        if len(good) + 1 < needed(answered):
            self.skipped += 1
            self._note(f"berkeley round {r.number} (epoch {r.epoch}) skipped: "
                       f"{len(good) + 1} of {answered} clocks read with a round trip within "
                       f"{limit * 1000:.1f}ms (mine included), need {needed(answered)}; "
                       f"round trips {_rtts(r.readings)}")
            return
        my_clock = self.clock.now()
        offsets = {self.my_id: 0.0} | {sid: rd.offset(my_clock, now) for sid, rd in good.items()}
        avg = fault_tolerant_average(offsets, self.config.berkeley_outlier_s)
        corrections = {sid: avg.value - off for sid, off in offsets.items()}
        self._note(self._describe(r, offsets, avg, corrections, slow, limit))
        others = {sid: delta for sid, delta in corrections.items() if sid != self.my_id}
        self._publish(protocol.TimeAdjust(sender=self.my_id, epoch=r.epoch, round=r.number,
                                          corrections=others))
        self._apply(corrections[self.my_id], r.number, self.my_id)

    def _describe(self, r: Round, offsets: dict[int, float], avg: Average,
                  corrections: dict[int, float], slow: dict[int, float], limit: float) -> str:
        def reading(sid: int) -> str:
            rtt = f"(rtt {r.readings[sid].rtt * 1000:.1f}ms)" if sid in r.readings else ""
            return f"s{sid}={_ms(offsets[sid])}{rtt}"
        ids = sorted(offsets)
        excluded = [f"s{sid} {_ms(offsets[sid])}" for sid in ids if sid not in avg.accepted]
        return (LL.ROUND.format(
                    number=r.number, epoch=r.epoch,
                    readings=' '.join(reading(sid) for sid in ids), median=_ms(avg.median),
                    excluded=', '.join(excluded), avg=_ms(avg.value),
                    corrections=' '.join(f's{sid}={_ms(corrections[sid])}' for sid in ids))
                + (f"; discarded for round trips over {limit * 1000:.1f}ms: "
                   f"{', '.join(f's{sid} {rtt * 1000:.1f}ms' for sid, rtt in sorted(slow.items()))}"
                   if slow else ""))

    # --- every server's side ----------------------------------------------------------
    def on_HB(self, msg: protocol.Heartbeat, now: float) -> None:
        """The broker's heartbeat: keep its stamp, for my next HB to echo."""
        if msg.stamp is not None:
            self._broker_stamp = (msg.stamp, now)

    def echo(self, hb: protocol.Heartbeat, now: float) -> protocol.Heartbeat:
        """My HB to the broker, with the last stamp it sent me and how long I held it
        (only an HB that carries my clock: the broker needs the round trip of that)."""
        if self._broker_stamp is None or hb.clock is None:
            return hb
        stamp, heard = self._broker_stamp
        return msgspec.structs.replace(hb, echo=stamp, held=max(0.0, now - heard))

    def on_TIME_QUERY(self, msg: protocol.TimeQuery, now: float) -> None:
        """Berkeley step 2: answer the coordinator with my clock reading."""
        if msg.sender == self.my_id or self._stale(msg):
            return
        self._publish(protocol.TimeReply(sender=self.my_id, to=msg.sender, round=msg.round,
                                         probe=msg.probe, time=self.clock.now()))

    def on_TIME_ADJUST(self, msg: protocol.TimeAdjust, now: float) -> None:
        """Berkeley step 5: apply my own correction from the coordinator."""
        if msg.sender == self.my_id or self._stale(msg):
            return
        delta = msg.corrections.get(self.my_id)
        if delta is None:
            return                          # my reply missed that round
        self._apply(delta, msg.round, msg.sender)

    def _stale(self, msg) -> bool:
        """Fencing: refuse orders from an epoch older than the highest I have heard of
        (a deposed coordinator, or one cut off that has not yet heard of its successor)."""
        epoch, mine = msg.epoch, max(self.election.epoch, self.election.max_epoch)
        if epoch < mine:
            self._note(f"ignored stale {msg.TYPE} from s{msg.sender}: epoch {epoch} < mine {mine}")
            return True
        return False

    def _apply(self, delta: float, round_number: int, coordinator: int) -> None:
        self.clock.adjust(delta)
        self.last_sync = self.clock.now()
        self.offset_ms = -delta * 1000
        self.synced = True
        self._note(LL.ADJUSTED.format(delta_ms=f"{delta * 1000:+.3f}", round=round_number,
                                      coordinator=coordinator))

    def _note(self, what: str) -> None:
        if self._log is not None:
            self._log.note(what)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:+.1f}ms"


def _rtts(readings: dict[int, Reading]) -> str:
    """``s2 0.4ms, s3 87.1ms`` (no ``sN=``: the round regexes read those as offsets)."""
    return ", ".join(f"s{sid} {rd.rtt * 1000:.1f}ms" for sid, rd in sorted(readings.items())) \
        or "none"
