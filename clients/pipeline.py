"""Many requests in flight on one connection, each matched to its reply by request id.

A ``Pipeline`` keeps up to ``window`` requests outstanding at once, where the
Lazy Pirate client (``clients/connection.py``) keeps one. It is what the benchmark,
the bots and scripts use to write fast:

* **The fast path first.** A request in ``FAST_OPS`` goes to the broker's proxy
  (``broker/fast_path.py``, in C); every other request, and every retry, goes to
  the routed port, where the broker's loop picks a serving server or says why none
  serves (``unavailable: 1 of 3 servers reachable``).
* **Exactly once.** A request unanswered for ``request_timeout`` is sent again
  under the same request id (the next ``attempt``: a retry's copy wins, as for the
  CLI), and so is one answered ``unavailable``, after a pause that doubles from
  ``retry_first_delay``, until ``request_deadline``. A server applies a request id
  once, so a retry that reaches another server never makes a second post. A reply
  to a request already finished (an earlier try's, late) is dropped here.
* **A user's writes keep their order.** Each post and message carries its user's
  Lamport stamp, taken when it was issued (``Request.stamp``), the same on every
  retry; a server keeps it as the write's stamp, so the writes of one pipeline sort
  in the order they were issued on every server, whichever servers took them and
  in whatever order they arrived. A follow or unfollow is a barrier: it goes out
  alone, once everything before it is answered, and nothing after it goes out
  before its answer (a server checks an unfollow against the follows it holds).

* **Several requests in one message.** The first tries ready to go together (a
  window's worth after a poll) travel as one ``REQS`` of up to ``FAST_BATCH``
  requests (and ``FAST_BATCH_BYTES``); the server answers each, in order, and sends
  the replies of its loop turn for this connection as one ``REPS``. The proxy, the
  broker's log and the servers then handle one message where there were dozens,
  and every request keeps its own id, reply, retries and log line.
* **Linger** (``linger`` seconds, 0 by default). A client that issues requests one
  by one at a steady pace sends each alone, and each costs every process on its way
  a wake-up. With ``linger``, a request issued while others are in flight waits up
  to that long for more to travel with it (a request with nothing in flight, a
  retry, and a full ``REQS`` go at once), as Nagle's algorithm does for TCP. The
  benchmark's paced clients linger 10 ms; their latency counts the wait.

Synchronous and single-threaded: ``submit`` queues (and sends at once when nothing
is in flight), ``poll`` sends what the window allows, receives, retries and returns
what finished.
"""
from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import msgspec
import zmq

from common import keys
from common import protocol as P
from common import sockets
from common.clock import LamportClock
from common.config import Config

STAMPED_OPS = frozenset({P.OP_POST, P.OP_DM, P.OP_FOLLOW, P.OP_UNFOLLOW})
"""The writes that carry their issue stamp (``Request.stamp``)."""
BARRIER_OPS = frozenset({P.OP_FOLLOW, P.OP_UNFOLLOW})
"""Writes a server checks against what it holds: sent alone, in order."""


@dataclass
class Done:
    """A finished request: its reply's body (``ok``, ``result`` or ``code``/``error``),
    or ``reply`` None with ``code`` ``timeout`` when its deadline passed unanswered."""
    rid: str
    op: str
    reply: dict | None
    issued: float                       # monotonic, when it was submitted
    finished: float
    tries: int

    @property
    def ok(self) -> bool:
        return self.reply is not None and bool(self.reply.get("ok"))

    @property
    def code(self) -> str | None:
        if self.reply is None:
            return "timeout"
        return None if self.reply.get("ok") else self.reply.get("code") or P.ERR_INTERNAL


@dataclass
class Flight:
    request: P.Request
    issued: float
    deadline: float
    sent_at: float = 0.0
    tries: int = 0
    resend_at: float = 0.0              # when to send again (a timeout or a retryable error)
    delay: float = 0.0


@dataclass
class Pipeline:
    """Up to ``window`` requests of ``user`` in flight; CURVE client of the broker."""
    ctx: zmq.Context
    config: Config
    user: str | None
    broker_key: bytes
    window: int = 32
    token: str | None = None
    lamport: LamportClock = field(default_factory=LamportClock)
    fast: bool = True                   # False: every request by the routed port
    log: object = None                  # a ProcessLog: one line per send and per answer
    linger: float = 0.0                 # seconds a request may wait for company (below)

    def __post_init__(self) -> None:
        self.public, self.secret = zmq.curve_keypair()
        self.prefix = uuid.uuid4().hex[:10]
        self.count = 0
        self.queue: deque[Flight] = deque()
        self.flights: dict[str, Flight] = {}
        self.finished: list[Done] = []
        self.retries = 0
        self.barriers = 0                     # follows and unfollows in flight (0 or 1)
        self.resend_from = float("inf")       # no flight is due before this (may be early)
        cfg = self.config
        self.routed = self._open(cfg.endpoint(cfg.frontend_port), P.BROKER_TO_CLIENT)
        self.quick = self._open(cfg.endpoint(cfg.fast_frontend_port), P.FAST_TO_CLIENT) \
            if self.fast else None
        self.poller = zmq.Poller()
        for link in (self.routed, self.quick):
            if link is not None:
                self.poller.register(link.sock, zmq.POLLIN)

    def _open(self, endpoint: str, route: P.Route) -> P.Endpoint:
        sock = sockets.tune(self.ctx.socket(zmq.DEALER), self.config)
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = max(1000, 4 * self.window)
        keys.client_socket(sock, self.public, self.secret, self.broker_key)
        sock.connect(endpoint)
        return P.Endpoint(sock, route, self.lamport)

    # --- the verbs ---------------------------------------------------------------------
    def submit(self, op: str, args: dict, server: int | None = None,
               token: str | None = None, issued: float | None = None) -> str:
        """Queue one request (sent as soon as the window allows); its request id.
        ``issued``: when it was made (monotonic, now if None; its linger and deadline
        run from then). ``ProtocolError`` if it is invalid."""
        self.count += 1
        rid = f"{self.prefix}-{self.count}"
        stamp = self.lamport.tick() if op in STAMPED_OPS else None
        request = P.request(rid, op, self.user, args, server, time.time(),
                            token or self.token, stamp)
        now = time.monotonic()
        made = now if issued is None else min(issued, now)
        patience = args.get("wait", 0.0) if op == P.OP_LISTEN else 0.0
        self.queue.append(Flight(request, made, made + self.config.request_deadline + patience))
        if not self.flights:             # alone: at once; else with the others, at the poll
            self._pump(now)
        return rid

    @property
    def pending(self) -> int:
        """Requests submitted and not finished."""
        return len(self.queue) + len(self.flights)

    def poll(self, timeout: float) -> list[Done]:
        """Wait up to ``timeout`` seconds for replies (less if a retry or a deadline is
        due sooner); send what is due; what finished since the last call."""
        now = time.monotonic()
        self._pump(now)
        wake = min(now + timeout, self.resend_from, self._lingers_until(now))
        for sock, _ in self.poller.poll(sockets.poll_ms(wake - now)):
            link = self.quick if self.quick is not None and sock is self.quick.sock \
                else self.routed
            self._receive_all(link)
        now = time.monotonic()
        self._resend_due(now)
        self._pump(now)
        done, self.finished = self.finished, []
        return done

    def drain(self, timeout: float) -> list[Done]:
        """Poll until nothing is pending or ``timeout`` passed; everything finished."""
        end = time.monotonic() + timeout
        done: list[Done] = []
        while self.pending and (left := end - time.monotonic()) > 0:
            done += self.poll(min(left, 0.05))
        return done + self.poll(0)

    def call(self, op: str, args: dict, server: int | None = None,
             token: str | None = None) -> Done:
        """One request, waited for (the others in flight go on meanwhile)."""
        rid = self.submit(op, args, server, token)
        kept: list[Done] = []
        while True:
            for done in self.poll(0.05):
                if done.rid == rid:
                    self.finished = kept + self.finished
                    return done
                kept.append(done)

    def close(self) -> None:
        for link in (self.routed, self.quick):
            if link is not None:
                link.sock.close(0)

    # --- inside ------------------------------------------------------------------------
    def _lingers_until(self, now: float) -> float:
        """Until when the queued requests wait for more to go with them: while others
        are in flight, a request submitted less than ``linger`` ago waits, unless a
        whole ``REQS`` is ready (infinity: none waits)."""
        if not (self.linger and self.queue and self.flights
                and len(self.queue) < P.FAST_BATCH and len(self.flights) < self.window):
            return float("inf")
        until = self.queue[0].issued + self.linger
        return until if until > now else float("inf")

    def _pump(self, now: float) -> None:
        """Send queued requests while the window has room; a barrier goes alone. The
        first tries the fast path takes go together, in one ``REQS``."""
        if self._lingers_until(now) != float("inf"):
            return
        batch: list[Flight] = []
        while self.queue and len(self.flights) < self.window:
            head = self.queue[0]
            barrier = head.request.op in BARRIER_OPS
            if (self.flights or batch) and (barrier or self.barriers):
                break
            self.queue.popleft()
            self.flights[head.request.rid] = head
            self.barriers += barrier
            if not barrier and self._fast(head):
                batch.append(head)
                continue
            self._send_batch(batch, now)         # what came before it goes first
            batch = []
            self._send(head, now)
            if barrier:
                break
        self._send_batch(batch, now)

    def _fast(self, flight: Flight) -> bool:
        """Whether ``flight``'s next try takes the fast path: a first try of a fast
        operation, not pinned to a server."""
        request = flight.request
        return (self.quick is not None and flight.tries == 0 and request.server is None
                and request.op in P.FAST_OPS)

    def _send_batch(self, flights: list[Flight], now: float) -> None:
        """First tries for the fast path, as few ``REQS`` as their count and size allow
        (one alone goes as a ``REQ``)."""
        packed = [(flight, P.encode_body(flight.request)) for flight in flights]
        for run in P.batches(packed, lambda pair: len(pair[1])):
            self._send_packed([flight for flight, _ in run], [body for _, body in run], now)

    def _send_packed(self, flights: list[Flight], bodies: list[bytes], now: float) -> None:
        if len(flights) == 1:
            self._send(flights[0], now)
            return
        try:
            self.quick.relay(P.REQUESTS, P.pack("reqs", bodies), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass                         # its queue is full: they count as sent, and retry
        for flight in flights:
            self._sent(flight, now, fast=True, together=len(flights))

    def _send(self, flight: Flight, now: float) -> None:
        request = flight.request
        if flight.tries:
            request = msgspec.structs.replace(request, attempt=min(flight.tries, 10_000))
        fast = self._fast(flight)
        try:
            (self.quick if fast else self.routed).send(request, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass                         # its queue is full: it counts as sent, and retries
        self._sent(flight, now, fast)

    def _sent(self, flight: Flight, now: float, fast: bool, together: int = 1) -> None:
        request = flight.request
        flight.tries += 1
        flight.sent_at = now
        if self.log is not None:
            again = f" try={flight.tries}" if flight.tries > 1 else ""
            path = f"fast path, {together} together" if together > 1 else \
                "fast path" if fast else "routed"
            self.log.line("send", "broker", f"{request.op} rid={request.rid} ({path}{again})")
        flight.resend_at = min(flight.deadline, now + self.config.request_timeout + (
            request.args.wait or 0.0 if request.op == P.OP_LISTEN else 0.0))
        self.resend_from = min(self.resend_from, flight.resend_at)

    def _receive_all(self, link: P.Endpoint) -> None:
        while True:
            try:
                frames = P.recv(link.sock, zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = link.receive(frames).msg
            except P.ProtocolError:
                continue                 # not a reply we can read: its request retries
            now = time.monotonic()
            for reply in (msg.reps if isinstance(msg, P.Replies) else (msg,)):
                self._answered(reply, now)

    def _answered(self, reply: P.Reply, now: float) -> None:
        flight = self.flights.get(reply.rid)
        if flight is None:
            return                       # an earlier try's late reply: already finished
        if not reply.ok and reply.code in P.RETRYABLE_ERRORS and now < flight.deadline:
            flight.delay = min(self.config.retry_max_delay,
                               flight.delay * 2 or self.config.retry_first_delay)
            flight.resend_at = min(flight.deadline, now + flight.delay)
            self.resend_from = min(self.resend_from, flight.resend_at)
            return
        self._finish(reply.rid)
        if self.log is not None:
            what = "ok" if reply.ok else f"error {reply.code}: {reply.error}"
            self.log.line("recv", f"server-{reply.server}" if reply.server else "broker",
                          f"{flight.request.op} {what} rid={reply.rid}")
        self.finished.append(Done(reply.rid, flight.request.op, P.to_builtins(reply),
                                  flight.issued, now, flight.tries))

    def _finish(self, rid: str) -> None:
        flight = self.flights.pop(rid)
        self.barriers -= flight.request.op in BARRIER_OPS

    def _resend_due(self, now: float) -> None:
        """Send again, or give up on, the flights that are due. The flights are looked
        at only once the earliest one may be due (``resend_from``), not at every poll:
        with a window of them in flight, that scan was most of a paced client's work."""
        if now < self.resend_from:
            return
        self.resend_from = float("inf")
        for rid, flight in list(self.flights.items()):
            if now < flight.resend_at:
                self.resend_from = min(self.resend_from, flight.resend_at)
                continue
            if now >= flight.deadline:
                self._finish(rid)
                if self.log is not None:
                    self.log.line("local", "-", f"{flight.request.op} rid={rid}: no answer "
                                                f"after {flight.tries} tries", "WARNING")
                self.finished.append(Done(rid, flight.request.op, None, flight.issued, now,
                                          flight.tries))
            else:
                self.retries += 1
                self._send(flight, now)
