"""Bully election with epochs: the highest live server id is the coordinator.

Garcia-Molina's bully algorithm, on the bus that every server hears:

* A process that finds the coordinator silent calls an election: ELECTION.
* A process that hears ELECTION from a lower id answers ANSWER and holds its own
  election (a coordinator that is still current just announces itself again).
* A candidate that hears no ANSWER within ``answer_timeout`` is the coordinator and
  says so with COORDINATOR; one that was answered waits ``coordinator_wait`` for it,
  then calls a new election.
* A process that (re)starts calls an election, so a higher id always takes over.

Epochs: a new coordinator claims the next term above any epoch it has seen, and its
epoch is ``term * 100 + id``, so the last two digits name the coordinator (epoch 305:
term 3, server 5). No two servers can ever claim the same epoch, even when nobody
alive could tell a newcomer the current one (the last coordinator frozen, the rest
dead). Between two claims the higher epoch wins. A coordinator steps down the moment
it hears a higher claim, in a COORDINATOR or a BEAT, and servers refuse orders
carrying an epoch lower than theirs, so a deposed coordinator cannot act on them.

A coordinator only with a majority behind it (issue 13):

* a server claims coordinatorship only while it hears a majority of the members
  (``quorum``: each heard within the last two heartbeats), and steps down once it
  has not heard a majority for ``stepdown_after`` (1.5 s) -- before anyone claims in
  its place, which waits until it has been silent ``claim_wait`` (2.2 s, below). Two
  coordinators (of two epochs: followers obey the higher) overlap only when a
  partition moves under a fresh claim, and for ``stepdown_after`` at most;
* while it hears no majority it calls no elections (it could win none);
* a candidate that heard no ANSWER does not claim while a higher member was heard
  within ``claim_wait`` (``higher_heard``: its ANSWER was only late, on a lossy link
  whose TCP stream stalls for a second or more), so loss alone does not churn epochs:
  the election that follows a real failure is the only one.

Pure logic: no sockets, no threads, no clock reads. The server passes
``time.monotonic()`` in as ``now`` and calls ``tick()`` on every loop iteration.
"""
from __future__ import annotations

from typing import Callable

from common import log_lines as LL
from common import protocol
from common.config import Config
from common.log import ProcessLog

FOLLOWER = "follower"
CANDIDATE = "candidate"
COORDINATOR = "coordinator"

OVERDUE = 0.0
"""A deadline in the past: the server should tick at once."""

EPOCH_STRIDE = 100
"""Epoch = term * EPOCH_STRIDE + server id; server ids run from 1 to 99."""
EPOCH_LEAD = 10 ** 8
"""An epoch this far above the highest I have heard of is not believed: honest
epochs grow by one term (100) per election, and one forged far-ahead claim would
otherwise push every later claim toward the protocol's ceiling."""


class Bully:
    """One server's view of the election: its state, the coordinator and the epoch."""

    def __init__(self, my_id: int, config: Config,
                 publish: Callable[[object], None], log: ProcessLog | None, *,
                 quorum: Callable[[float, float], bool] = lambda now, window: True,
                 higher_heard: Callable[[], float | None] = lambda: None) -> None:
        if not 1 <= my_id < EPOCH_STRIDE:
            raise ValueError(f"server id {my_id} is not in 1..{EPOCH_STRIDE - 1}")
        self.my_id = my_id
        self.config = config
        self._publish = publish
        self._log = log
        self._state = FOLLOWER
        self._coordinator: int | None = None
        self._epoch = 0                     # the epoch of the coordinator I follow
        self._max_epoch = 0                 # the highest epoch I have heard of
        self._started = False
        self._answered = False              # candidate: a higher id said it takes over
        self._deadline: float | None = None  # candidate: when to win, or to start over
        self._coordinator_seen = 0.0        # monotonic: last traffic from the coordinator
        self.elections = 0
        self.messages_sent = 0
        self._quorum = quorum               # (now, window) -> a majority heard within window?
        self._higher_heard = higher_heard   # () -> when a server above me was last heard
        self._no_quorum = False             # said "no majority" (once, until it is back)
        self._claimed: int | None = None    # the last epoch I claimed, in this process
        self._deferred = False              # said "a higher id is alive" (once per election)

    # --- what the server reads -------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    @property
    def coordinator(self) -> int | None:
        return self._coordinator

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def is_coordinator(self) -> bool:
        return self._state == COORDINATOR

    @property
    def max_epoch(self) -> int:
        """The highest epoch heard of: orders from below it are not obeyed."""
        return self._max_epoch

    def next_deadline(self) -> float | None:
        """The earliest monotonic time at which ``tick()`` has something to do."""
        if not self._started or self._state == COORDINATOR:
            return None
        if self._state == CANDIDATE:
            return self._deadline
        if self._coordinator is None:
            return OVERDUE
        return self._coordinator_seen + self.config.election_timeout

    # --- what the server calls -------------------------------------------------
    def start(self, now: float) -> None:
        """Bully: a process that (re)starts calls an election, so that it takes
        over if it is the highest. Until then this object only listens."""
        if not self._started:
            self._started = True
            self._call_election(now)

    def saw_peer(self, sender: int, now: float) -> None:
        """Any traffic from the coordinator proves it alive (call on every bus message)."""
        if sender == self._coordinator and sender != self.my_id:
            self._coordinator_seen = max(self._coordinator_seen, now)

    def on_BEAT(self, msg: protocol.Beat, now: float) -> None:
        """Adopt the coordinator a peer's BEAT names if it beats mine.

        A BEAT never fills a vacancy at my own epoch: it may name a coordinator that
        its sender has not yet found dead, and re-adopting that would stall elections.
        The coordinator's own BEAT does: it is alive and claims my epoch still. (A
        candidate that called an election the coordinator never heard, across a cut,
        would otherwise wait for a COORDINATOR that never comes, deferring its claim
        for as long as the coordinator beats.)
        """
        sender, epoch, coordinator = msg.sender, msg.epoch, msg.coordinator
        self.saw_peer(sender, now)
        if not self._see_epoch(epoch, msg):
            return
        if coordinator is None or coordinator == self.my_id:
            return                          # no claim, or a claim of mine from before a restart
        if self._outranks(coordinator, epoch, fill_vacancy=sender == coordinator):
            self._follow(coordinator, epoch, sender, now)

    def leave(self, why: str = "leaving") -> None:
        """I am leaving (SIGTERM) or halted (my disk): stop taking part, so the
        election my BYE sets off is not won by me again; as coordinator I step down
        at once."""
        if self._state == COORDINATOR:
            self._note(f"stepping down: {why} (epoch {self._epoch})")
            self._coordinator = None
        self._state = FOLLOWER
        self._started = False

    def on_BYE(self, msg: protocol.Bye, now: float) -> None:
        """A peer said BYE. If it was my coordinator, waiting ``election_timeout``
        for its silence would only waste time: call the election now."""
        sender = msg.sender
        if sender != self._coordinator or sender == self.my_id:
            return
        self._note(f"coordinator s{sender} left: election at once")
        self._coordinator = None
        if self._started and self._state != CANDIDATE:
            self._call_election(now)

    def on_ELECTION(self, msg: protocol.Election, now: float) -> None:
        """Bully: ELECTION from a lower id gets an ANSWER, and I hold my own election."""
        sender, epoch = msg.sender, msg.epoch
        if not self._see_epoch(epoch, msg) or not self._started or sender >= self.my_id:
            return
        self._send(protocol.Answer(sender=self.my_id, to=sender, epoch=self._epoch))
        if self._state == COORDINATOR and epoch <= self._epoch:
            self._announce()                # still current: no need for a new epoch
        elif self._state != CANDIDATE:
            if self._state == COORDINATOR:
                self._note(f"stepping down: saw epoch {epoch} from s{sender}")
                self._coordinator = None
            self._call_election(now)

    def on_ANSWER(self, msg: protocol.Answer, now: float) -> None:
        """Bully: a candidate answered by a higher id stops trying to win and waits
        ``coordinator_wait`` for that id's COORDINATOR."""
        if not self._see_epoch(msg.epoch, msg):
            return
        if msg.to != self.my_id or self._state != CANDIDATE or self._answered:
            return
        self._answered = True
        self._deadline = now + self.config.coordinator_wait

    def on_COORDINATOR(self, msg: protocol.Coordinator, now: float) -> None:
        """Accept a COORDINATOR with a higher epoch than mine, or my epoch and an id
        no lower than my coordinator's; refuse any other."""
        sender, epoch = msg.sender, msg.epoch
        if not self._see_epoch(epoch, msg) or sender == self.my_id:
            return
        current = (epoch, sender) == (self._epoch, self._coordinator)
        if current or self._outranks(sender, epoch, fill_vacancy=True):
            self._follow(sender, epoch, sender, now)
        elif epoch < self._epoch:
            self._note(f"rejected COORDINATOR from s{sender}: epoch {epoch} < mine {self._epoch}")
        else:
            self._note(f"rejected COORDINATOR from s{sender}: "
                       f"s{self._coordinator} is higher in epoch {epoch}")

    def tick(self, now: float) -> None:
        """The periodic job; idempotent, so call it on every loop iteration.

        A candidate nobody answered wins; one answered but never told who won
        starts over; a follower whose coordinator fell silent for
        ``election_timeout`` calls an election.
        """
        if self._state == COORDINATOR:
            if not self._quorum(now, self.config.stepdown_after):
                self._note(f"stepping down: no majority of the members heard for "
                           f"{self.config.stepdown_after:g} s (epoch {self._epoch})")
                self._state, self._coordinator = FOLLOWER, None
            return
        if not self._started:
            return
        if not self._quorum(now, 2 * self.config.heartbeat_interval):
            if not self._no_quorum:
                self._note("no majority of the members in reach: no election until there is")
                self._no_quorum = True
            self._state = FOLLOWER if self._state == CANDIDATE else self._state
            return
        if self._no_quorum:
            self._no_quorum = False
            self._note("a majority of the members is in reach again")
            if self._coordinator is None or self._coordinator < self.my_id:   # bully: mine
                self._call_election(now)
                return
        if self._state == CANDIDATE:
            if now < self._deadline:
                return
            if self._answered:
                self._note("no COORDINATOR after an ANSWER: starting over")
                self._call_election(now)
            elif (heard := self._higher_heard()) is not None and \
                    now - heard < self.config.claim_wait:
                if not self._deferred:
                    self._note(f"no ANSWER, but a server above me was heard "
                               f"{(now - heard) * 1000:.0f} ms ago: no claim before it is "
                               f"silent {self.config.claim_wait:g} s")
                    self._deferred = True
                self._deadline = heard + self.config.claim_wait   # then look again
            else:
                self._become_coordinator()
        elif self._coordinator is None:
            self._call_election(now)
        elif now >= self._coordinator_seen + self.config.election_timeout:
            self._note(LL.SILENT.format(coordinator=self._coordinator,
                                        seconds=f"{now - self._coordinator_seen:.2f}s"))
            self._coordinator = None
            self._call_election(now)

    # --- transitions -------------------------------------------------------------
    def _call_election(self, now: float) -> None:
        self._state = CANDIDATE
        self._answered = False
        self._deferred = False
        self._deadline = now + self.config.answer_timeout
        self.elections += 1
        self._note(f"election called (epoch {self._epoch})")
        self._send(protocol.Election(sender=self.my_id, epoch=self._epoch))

    def _become_coordinator(self) -> None:
        again = self._claimed is not None and self._claimed == self._max_epoch
        if not again:       # my last epoch, if nobody claimed since: else the next term
            self._claimed = (self._max_epoch // EPOCH_STRIDE + 1) * EPOCH_STRIDE + self.my_id
        self._epoch = self._max_epoch = self._claimed
        self._state = COORDINATOR
        self._coordinator = self.my_id
        self._deadline = None
        self._note(LL.CLAIM.format(epoch=self._epoch)
                   + (" again: no epoch was claimed since mine" if again else ""))
        self._announce()

    def _follow(self, coordinator: int, epoch: int, source: int, now: float) -> None:
        """Accept ``coordinator`` for ``epoch``. Bully: if it is lower than me and I
        have started, I hold (or keep holding) an election instead of following."""
        takes_over = self._started and coordinator < self.my_id
        news = (coordinator, epoch) != (self._coordinator, self._epoch)
        if self._state == COORDINATOR:
            self._note(f"stepping down: saw epoch {epoch} from s{source}")
        if news or (self._state != FOLLOWER and not takes_over):
            self._note(LL.FOLLOW.format(coordinator=coordinator, epoch=epoch))
        self._coordinator = coordinator
        self._epoch = epoch
        self._coordinator_seen = now
        if not takes_over:
            self._state = FOLLOWER
        elif self._state != CANDIDATE:
            self._call_election(now)

    def _announce(self) -> None:
        self._send(protocol.Coordinator(sender=self.my_id, epoch=self._epoch))

    # --- helpers -------------------------------------------------------------------
    def _outranks(self, coordinator: int, epoch: int, *, fill_vacancy: bool) -> bool:
        """The order of claims: a higher epoch wins; at my epoch (only a stale or
        forged claim can name another id there) the higher id."""
        if epoch != self._epoch:
            return epoch > self._epoch
        if self._coordinator is None:
            return fill_vacancy
        return coordinator > self._coordinator

    def _see_epoch(self, epoch: int, msg) -> bool:
        """Remember the highest epoch heard of; False (and a log line) for one too
        far ahead to believe, whose message is then ignored."""
        if epoch > self._max_epoch + EPOCH_LEAD:
            self._note(f"ignored {msg.TYPE} from s{msg.sender}: epoch {epoch} is far above "
                       f"any I know ({self._max_epoch})")
            return False
        self._max_epoch = max(self._max_epoch, epoch)
        return True

    def _send(self, msg) -> None:
        self.messages_sent += 1
        self._publish(msg)

    def _note(self, what: str) -> None:
        if self._log is not None:
            self._log.note(what)
