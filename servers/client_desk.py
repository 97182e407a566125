"""The server's desk for client requests: answer reads, turn writes into events,
park listens, and answer each write once enough servers hold it.

It holds no socket and no reference to the server: replies go out through the
``reply`` function it is given, events are made by ``Replication``, and what each
operation means is in ``requests.py``. Requests arrive already decoded and
validated (``protocol.Request``). Every request but ``register`` and ``login``
needs a valid session token of its ``user`` (``servers/accounts.py``): the desk
checks it before anything is read or written, so a request acts only as the
token's owner, and reads (``chat A B``, ``notifications``, ``listen``) are only
ever of the requester's own data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from common import protocol as P
from common.clock import LamportClock, PhysicalClock
from common.log import ProcessLog, args_brief
from servers.accounts import Accounts
from servers.listeners import Listeners
from servers.replication import Replication
from servers.replication_lag import ReplicationLag
from servers.requests import ClientRequests, RequestError


SETTLE_FOR = 3.0
"""Seconds an account event's answer waits at most for every peer (``_settled``)."""
SETTLED_KINDS = frozenset({P.EV_ACCOUNT, P.EV_SESSION, P.EV_LOGOUT})
RETRIED_KINDS = frozenset({P.EV_POST, P.EV_DM, P.EV_FOLLOW, P.EV_UNFOLLOW})
"""Writes whose reply names their copy (its Lamport stamp, its server): a later try
of one makes a copy of its own, which wins (``protocol.copy_key``), so the reply to
the last try names the copy that is kept, wherever the earlier tries' copies are."""


@dataclass
class Settling:
    waiter: object
    holders: int
    deadline: float
    kind: str
    target: dict | None = None


class ClientDesk:
    def __init__(self, my_id: int, requests: ClientRequests, replication: Replication,
                 listeners: Listeners, lag: ReplicationLag, lamport: LamportClock,
                 clock: PhysicalClock, log: ProcessLog | None, *, replicas: int,
                 reply: Callable[[bytes, P.Reply], None],
                 unavailable: Callable[[], str | None], accounts: Accounts,
                 short_of_majority: Callable[[float], str | None] = lambda now: None,
                 write_wait: float = float("inf")) -> None:
        self.my_id = my_id
        self.requests = requests
        self.replication = replication
        self.listeners = listeners
        self.lag = lag
        self.lamport = lamport
        self.clock = clock
        self.log = log
        self.replicas = replicas
        self.accounts = accounts
        self._settling: list[Settling] = []
        self._reply = reply
        self._unavailable = unavailable
        """None while serving; else why not (``server-2 is syncing``)."""
        self._short_of_majority = short_of_majority
        """None with a majority of the members in reach; else ``1 of 3 servers reachable``."""
        self.write_wait = write_wait
        """Seconds a write waits for its copies before its user is told to retry."""

    def reply(self, route: bytes, rid: str, user: str | None, result: dict | None = None,
              code: str | None = None, error: str | None = None) -> None:
        self._reply(route, P.Reply(rid=rid, ok=code is None, server=self.my_id,
                                   time=self.clock.now(), result=result, code=code,
                                   error=error))
        if self.log is not None:
            what = f"ok replicas={result.get('replicas')}" if code is None else f"{code}: {error}"
            self.log.send(user or "anonymous", f"reply rid={rid} {what}")

    # --- requests in ---------------------------------------------------------------
    def on_REQ(self, route: bytes, msg: P.Request, now: float) -> None:
        """A client's request from the broker: read, or write."""
        if self.log is not None:
            self.log.recv(msg.user or "anonymous", f"{msg.op} rid={msg.rid} {args_brief(msg.args)}")
        try:
            why = self._unavailable()
            if why is not None:
                raise RequestError(P.ERR_UNAVAILABLE, why)
            if msg.op in P.READ_OPS:
                self.accounts.authorize(msg.user, msg.token, self.clock.now())
                self.reply(route, msg.rid, msg.user, self.requests.read(msg.op, msg.user, msg.args))
            elif msg.op in P.WRITE_OPS:
                self.write(route, msg.rid, msg.op, msg.user, msg.args, now, msg.token,
                           attempt=msg.attempt, stamp=msg.stamp)
            else:
                raise RequestError(P.ERR_BAD_REQUEST, f"{msg.op} is answered by the broker")
        except RequestError as exc:
            self.reply(route, msg.rid, msg.user, code=exc.code, error=str(exc))

    def write(self, route: bytes, rid: str, op: str, user: str, args: P.Args, now: float,
              token: str | None, listen_until: float | None = None, attempt: int = 0,
              stamp: int | None = None) -> None:
        """Make the event of a write (or find it, for a retry) and wait for its copies.
        With no majority of the members in reach, nothing is made: the user hears why
        at once (and retries elsewhere, or later, under the same request id). A post,
        message, follow or unfollow with a ``stamp`` (``Request.stamp``) carries it."""
        wall = self.clock.now()
        short = self._short_of_majority(now)
        if short is not None:
            raise RequestError(P.ERR_UNAVAILABLE, f"unavailable: {short}")
        existing = self.replication.event(rid)
        if existing is not None:                 # a retry: applied once, answered again
            self.accounts.same_request(existing, op, user, args, token, now, wall)
            if attempt > existing.attempt and existing.kind in RETRIED_KINDS:
                if self.log is not None:
                    self.log.note(f"retry of {rid} (try {attempt + 1}): held as "
                                  f"{existing.origin}:{existing.seq} from try "
                                  f"{existing.attempt + 1}; this try's copy replaces it")
                self._create(route, rid, existing.kind, user, existing.data, now, attempt,
                             stamp)
                return
            if self.log is not None:
                self.log.note(f"retry of {rid}: already applied as "
                              f"{existing.origin}:{existing.seq}")
            self.replication.wait(route, rid, existing, now)
            return
        if op in (P.OP_REGISTER, P.OP_LOGIN, P.OP_LOGOUT):
            kind, data = self.accounts.plan(op, user, args, token, now, wall)
            self._create(route, rid, kind, user, data, now, attempt)
            return
        self.accounts.authorize(user, token, wall)
        parked_here = op == P.OP_LISTEN and self.listeners.drop(rid) is not None
        plan = self.requests.plan(op, user, args)
        if isinstance(plan, dict):               # nothing to write
            if op == P.OP_LISTEN and args.wait > 0:
                self.listeners.park(route, rid, user, args, listen_until or now + args.wait,
                                    token)
            elif op == P.OP_LISTEN and attempt > 0 and not parked_here:
                # the user stopping a listen parked on another server (the broker's
                # pool changed under it): an empty SEEN under its rid, of a later try,
                # so that the parked copy marks nothing shown for a listener who left
                self._create(route, rid, P.EV_SEEN, user,
                             P.EventData(shown=[], delivered=[]), now, attempt)
            else:
                self.reply(route, rid, user, plan)
            return
        kind, data = plan
        self._create(route, rid, kind, user, data, now, attempt,
                     stamp if kind in RETRIED_KINDS else None)

    def _create(self, route: bytes, rid: str, kind: str, user: str, data: P.EventData,
                now: float, attempt: int = 0, stamp: int | None = None) -> None:
        if stamp is None:
            lamport = self.lamport.tick()
        elif stamp > self.lamport.value:         # the request's own clock is merged: a lie
            raise RequestError(P.ERR_BAD_REQUEST,
                               f"stamp {stamp} is ahead of the request's Lamport clock")
        else:
            lamport = stamp
        event = self.replication.create(kind, user, data, rid, lamport,
                                        self.clock.stamp(), attempt)
        self.replication.wait(route, rid, event, now)

    # --- listens ---------------------------------------------------------------------
    def wake(self, users, now: float) -> None:
        """New posts or messages for ``users``: answer their parked listens that now
        have items (or, when this server stopped serving, send them elsewhere)."""
        for p in self.listeners.take(users):
            try:
                why = self._unavailable()
                if why is not None:
                    raise RequestError(P.ERR_UNAVAILABLE, why)
                self.write(p.route, p.rid, P.OP_LISTEN, p.user, p.args, now, p.token,
                           p.deadline)
            except RequestError as exc:
                self.reply(p.route, p.rid, p.user, code=exc.code, error=str(exc))

    def wake_all(self, now: float) -> None:
        """This server stops serving: every parked listen goes elsewhere at once."""
        self.wake(list(self.listeners.by_user), now)

    def expire_listeners(self, now: float) -> None:
        """Listens that waited ``wait`` seconds in vain are answered empty."""
        for p in self.listeners.take_expired(now):
            self.reply(p.route, p.rid, p.user, {"user": p.user, "items": [], "replicas": None})

    def turn_away(self, why: str) -> None:
        """This server can hold no more writes (its disk): every client still waiting
        for one is answered ``unavailable``, never acknowledged, and retries elsewhere
        under the same request id (applied once: see ``write``)."""
        for waiter in self.replication.drop_waiters():
            event = self.replication.event(waiter.event_id)
            self.reply(waiter.route, waiter.rid, event.user if event else None,
                       code=P.ERR_UNAVAILABLE, error=why)

    def expire_writes(self, now: float) -> None:
        """Writes that waited ``write_wait`` for their copies in vain: their users are
        told so (``unavailable``, which they retry under the same request id: applied
        once), never left hanging. The event stays, and replicates once it can."""
        for waiter, holders, need in self.replication.take_overdue(now, self.write_wait):
            event = self.replication.event(waiter.event_id)
            short = self._short_of_majority(now)
            why = f"; {short}" if short else ""
            self.reply(waiter.route, waiter.rid, event.user if event else None,
                       code=P.ERR_UNAVAILABLE,
                       error=f"unavailable: the write has {holders} of the {need} copies it "
                             f"needs after {self.write_wait:g} s{why}; retry with the same "
                             f"request id")

    # --- replies out -------------------------------------------------------------------
    def answer_acked(self, now: float) -> None:
        """Answer every write that now has enough copies (once per loop turn)."""
        if self.log is None or not self.replication.waiters:
            self._answer_acked(now)
            return
        with self.log.moment():                  # the turn's answers go out together
            self._answer_acked(now)

    def _answer_acked(self, now: float) -> None:
        ready = []
        for waiter, holders in self.replication.ready(now):
            event = self.replication.event(waiter.event_id)
            if event is not None and event.kind in SETTLED_KINDS:
                self._settling.append(Settling(waiter, holders, now + SETTLE_FOR, event.kind))
            else:
                ready.append((waiter, holders))
        if self._settling:
            ready += self._settled(now)
        for waiter, holders in ready:
            event = self.replication.event(waiter.event_id)
            if event is None:
                continue
            if holders < self.replicas and self.log is not None:
                self.log.warn(f"under-replicated: {waiter.event_id} acked with {holders} "
                              f"of {self.replicas} copies (too few servers alive)")
            try:
                self.accounts.outcome(event, self.clock.now())
            except RequestError as exc:          # a register that lost its name at the end
                self.reply(waiter.route, waiter.rid, event.user, code=exc.code, error=str(exc))
            else:
                self.reply(waiter.route, waiter.rid, event.user,
                           self.requests.result(event, holders))
            self.lag.answered(event, now)

    # --- accounts: answered once every server holds them ---------------------------------------
    def _settled(self, now: float) -> list:
        """The register, login and logout events that may be answered now: once every
        live peer holds them (not only ``replicas`` of them), so that a session is
        taken, or a logout refused, by whichever server the next request reaches.

        Two servers may register one name at once; the one earlier in the total order
        owns it everywhere. A server that made a rival registration made it before it
        held ours, so the vector in its ACK of ours covers its rival: once every live
        peer holds ours and we hold everything their vectors said then,
        ``Accounts.outcome`` sees any rival, and the loser is told. (After
        ``SETTLE_FOR`` at most, in case a peer's events never come.)"""
        done, still = [], []
        vv = self.replication.state.vv()
        for s in self._settling:
            peers = self.replication.peers.live(now)
            if s.target is None and all(p.holds(s.waiter.origin, s.waiter.seq) for p in peers):
                s.target = {}
                for p in peers if s.kind == P.EV_ACCOUNT else ():
                    for origin, seq in p.vv.items():
                        s.target[origin] = max(seq, s.target.get(origin, 0))
            caught_up = s.target is not None and all(vv.get(o, 0) >= seq
                                                     for o, seq in s.target.items())
            (done if caught_up or now >= s.deadline else still).append(s)
        self._settling = still
        return [(s.waiter, s.holders) for s in done]
