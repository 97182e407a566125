"""A user's connection to the broker: the ZeroMQ Guide's Lazy Pirate.

One DEALER socket talks to the broker's frontend. A request is sent, and if no
reply comes within ``request_timeout`` the socket is thrown away (a reply may
still be queued on it, and a fresh socket is the only way to forget it) and the
same request -- same ``rid``, so the servers can tell it is a retry -- goes out
on a new one, until the absolute ``request_deadline`` has passed.

The socket is a CURVE client (stonehouse): a fresh keypair per connection, and the
broker's public key from the data folder or ``SOCIAL_BROKER_KEY``, checked in the
handshake, so nobody else can pose as the broker or read the traffic.

Nobody answering is said at once: ``on_waiting`` gets the endpoint and where the
port base came from after ``WAIT_NOTICE`` seconds; the CLI gives up a read after
``READ_DEADLINE`` seconds (a write only at its deadline) with a hint.

Every reply also carries two clocks: its Lamport stamp is merged into the
user's Lamport clock, and its physical ``time`` corrects the user's physical
clock by Cristian's algorithm.
"""
from __future__ import annotations

import time
import uuid
from typing import Callable

import msgspec
import zmq

from common import keys, protocol, sockets
from common.clock import LamportClock, PhysicalClock, cristian
from common.config import Config
from common.log import ProcessLog, args_brief

KEY_POLL = 0.05
"""Seconds between two looks for the broker's key while a broker starts."""
CLOCK_NOTE_THRESHOLD = 0.001
"""Clock corrections larger than this (seconds) are written to the log."""
WAIT_NOTICE = 0.8
"""Seconds without a reply after which ``on_waiting`` is told what the client waits for."""
READ_DEADLINE = 5.0
"""Seconds the CLI keeps retrying a read before giving up (a write keeps its
``request_deadline``: giving up early could leave it done but unacknowledged)."""


class ClientError(Exception):
    """A request that failed for good: ``code`` is one of protocol's ERR_* codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Waiting:
    """One request's notice: ``on_waiting`` once it has gone unanswered until ``notice_at``."""

    def __init__(self, connection: "Connection", notice_at: float) -> None:
        self.connection, self.notice_at, self.said = connection, notice_at, False

    def due(self) -> float:
        """When to call ``check`` next (never again once said)."""
        return float("inf") if self.said else self.notice_at

    def check(self) -> None:
        if not self.said and time.monotonic() >= self.notice_at:
            self.said = True
            if self.connection.on_waiting is not None:
                self.connection.on_waiting(self.connection.waiting_line())

    def now(self) -> None:
        """Say it now: the connection is lost, whatever the time."""
        self.notice_at = min(self.notice_at, time.monotonic())
        self.check()


def new_rid() -> str:
    return uuid.uuid4().hex[:16]


def peer_name(server: int | None) -> str:
    return "broker" if server is None else f"server-{server}"


def describe_result(result: dict) -> str:
    """The scalars of a result, and the length of its lists: ``replicas=3 posts=[20]``."""
    parts = []
    for name, value in result.items():
        if isinstance(value, (list, tuple)):
            parts.append(f"{name}=[{len(value)}]")
        elif isinstance(value, (int, float, str, bool)) or value is None:
            parts.append(f"{name}={value}")
    return " ".join(parts)


class Connection:
    """Sends requests to the broker and waits for their replies, retrying."""

    def __init__(self, config: Config, user: str | None, lamport: LamportClock,
                 clock: PhysicalClock, log: ProcessLog | None = None,
                 broker_key: bytes | None = None) -> None:
        self.config = config
        self.port_base_from = "the default"
        """Where the port base came from (``--port-base``, ``SOCIAL_PORT_BASE`` or the
        default), for the waiting line and the hint."""
        self.read_deadline: float | None = None
        """When set, reads give up after this many seconds (writes: ``request_deadline``)."""
        self.on_waiting: Callable[[str], None] | None = None
        """Called with ``waiting_line()`` when a request goes unanswered for ``WAIT_NOTICE``
        seconds (a listen: for its whole try), at most once per request."""
        self._earlier_tries: dict[str, int] = {}     # rid -> tries of an exchange given up
        self._monitor: zmq.Socket | None = None       # the socket's events (watch_disconnects)
        self._watching = False
        self.user = user
        self.lamport = lamport
        self.clock = clock
        self.log = log
        self.endpoint = config.endpoint(config.frontend_port)
        self.token: str | None = None
        """The session token every request carries (``login`` sets it)."""
        self.clock_correction = 0.0
        """The sum of every Cristian correction this connection applied (seconds)."""
        self._public, self._secret = zmq.curve_keypair()   # ephemeral: any key is let in
        self._context = zmq.Context()
        self._context.linger = 0
        self._socket: zmq.Socket | None = None
        self.broker_key = broker_key
        self.find_broker_key()

    def find_broker_key(self) -> keys.KeyProblem | None:
        """Open the socket once the broker's key is known; what is wrong until then (a
        problem is said when a request is sent, after the request's own checks)."""
        if self._socket is None:
            try:
                self.broker_key = self.broker_key or keys.broker_public_key(self.config.data_dir)
            except keys.KeyProblem as exc:
                return exc
            self._socket = self._open_socket()
        return None

    # --- the public verbs -------------------------------------------------
    def build(self, op: str, args: dict, server: int | None = None,
              token: str | None = None) -> protocol.Request:
        """A validated request with a fresh rid, carrying ``token`` (by default the
        connection's); ClientError if it is invalid."""
        try:
            return protocol.request(new_rid(), op, self.user, args, server, self.clock.stamp(),
                                    token or self.token)
        except protocol.ProtocolError as exc:
            raise ClientError(protocol.ERR_BAD_REQUEST, str(exc)) from None

    def request(self, op: str, args: dict, server: int | None = None,
                token: str | None = None) -> dict:
        """Run one operation; returns its result with ``server`` (who answered) added."""
        return self.exchange(self.build(op, args, server, token))

    def exchange(self, body: protocol.Request) -> dict:
        """Lazy Pirate: send ``body`` until a final reply or the deadline.

        Sent again after a give-up (``listen`` does), the same request counts its
        tries on, so the servers still see each copy as a later retry."""
        # a listen is a long poll: the server may rightly keep it for ``wait`` seconds
        is_listen = body.op == protocol.OP_LISTEN
        patience = self.config.request_timeout + (body.args.wait if is_listen else 0.0)
        started = time.monotonic()
        deadline = started + self.config.request_deadline + patience
        if self.read_deadline is not None and body.op not in protocol.WRITE_OPS:
            deadline = min(deadline, started + self.read_deadline)
        waiting = _Waiting(self, started + (patience if is_listen else WAIT_NOTICE))
        self._wait_for_broker_key(deadline, waiting)
        retry_delay = self.config.retry_first_delay
        tries = self._earlier_tries.pop(body.rid, 0)
        while True:
            tries += 1
            sent_at = self._send(body, tries)
            timeout_at = min(deadline, sent_at + patience)
            try:
                reply = self._wait_for_reply(body, timeout_at, waiting)
            except KeyboardInterrupt:           # a listen's cancel goes on counting:
                self._earlier_tries[body.rid] = tries     # a later try than the parked one
                raise
            if reply is None:
                self._reopen_socket(tries)
                if time.monotonic() >= deadline:
                    self._earlier_tries[body.rid] = tries
                    raise ClientError(protocol.ERR_UNAVAILABLE,
                                      f"no reply from the broker at {self.endpoint} after "
                                      f"{time.monotonic() - started:.1f} s; {self.hint()}")
                continue
            self._synchronize_clock(reply, sent_at)
            if reply.ok:
                return self._result_of(reply)
            error = self._error_of(reply)
            if error.code not in protocol.RETRYABLE_ERRORS or \
                    time.monotonic() + retry_delay >= deadline:
                raise error
            time.sleep(retry_delay)
            retry_delay = min(self.config.retry_max_delay, retry_delay * 2)

    def waiting_line(self) -> str:
        """``waiting for the broker at tcp://…:5555 (port base 5555 from the default)...``"""
        return (f"waiting for the broker at {self.endpoint} "
                f"(port base {self.config.port_base} from {self.port_base_from})...")

    def hint(self) -> str:
        return f"is `python run_all.py up` running on port base {self.config.port_base}?"

    def _wait_for_broker_key(self, deadline: float, waiting: "_Waiting") -> None:
        """A broker starting on this data folder writes its key at once: wait for it as
        for its reply (until ``deadline``); a malformed key fails at once."""
        while (problem := self.find_broker_key()) is not None:
            if not isinstance(problem, keys.NoBrokerKey) or time.monotonic() >= deadline:
                raise ClientError(protocol.ERR_UNAVAILABLE, str(problem))
            waiting.check()
            time.sleep(KEY_POLL)

    def watch_disconnects(self) -> None:
        """From now on a try ends as soon as the socket loses its broker (killed, or
        frozen: ZeroMQ's heartbeats notice within a second), not at its timeout; then
        ``on_waiting`` is called at once. For ``listen``, whose tries are long polls."""
        self._watching = True
        self._watch()

    def _watch(self) -> None:
        self._unwatch()
        if self._watching and self._socket is not None:
            self._monitor = self._socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)

    def _unwatch(self) -> None:
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None

    def close(self) -> None:
        if self._socket is not None:
            self._unwatch()
            self._socket.close(linger=0)
        self._context.term()

    # --- sockets ------------------------------------------------------------
    def _open_socket(self) -> zmq.Socket:
        socket = sockets.tune(self._context.socket(zmq.DEALER), self.config)
        socket.linger = 0
        keys.client_socket(socket, self._public, self._secret, self.broker_key)
        socket.connect(self.endpoint)
        self._endpoint = protocol.Endpoint(socket, protocol.BROKER_TO_CLIENT, self.lamport)
        return socket

    def _reopen_socket(self, tries: int) -> None:
        """A reply may still arrive on the old socket: only a new one forgets it."""
        self._unwatch()
        self._socket.close(linger=0)
        self._socket = self._open_socket()
        self._watch()
        self._note(f"no reply to try {tries} from the broker at {self.endpoint}; "
                   f"reconnected", level="WARNING")

    def _send(self, body: protocol.Request, tries: int) -> float:
        """Send ``body`` once; returns the monotonic send time."""
        parts = [body.op, f"rid={body.rid}", args_brief(body.args)]
        if body.server is not None:
            parts.append(f"server={body.server}")
        if tries > 1:
            parts.append(f"try={tries}")
        if tries > 1:                # a retry's copy of a write wins over earlier tries'
            body = msgspec.structs.replace(body, attempt=tries - 1)
        try:
            self._endpoint.send(body, flags=zmq.NOBLOCK)
        except zmq.Again:
            self._note("send queue full; waiting for the broker", level="WARNING")
        self._log("send", "broker", " ".join(part for part in parts if part))
        return time.monotonic()

    def _wait_for_reply(self, body: protocol.Request, timeout_at: float,
                        waiting: "_Waiting") -> protocol.Reply | None:
        """The reply to ``body`` (by rid), or None when ``timeout_at`` passes."""
        while True:
            now = time.monotonic()
            if now >= timeout_at:
                return None
            waiting.check()
            wake_at = min(timeout_at, waiting.due())
            ready = self._poll(max(1, int((wake_at - now) * 1000)))
            if ready is None:                      # the broker is gone: try again now
                waiting.now()
                return None
            if not ready:
                continue
            try:
                reply = self._endpoint.receive(self._socket.recv_multipart()).msg
            except protocol.ProtocolError as exc:
                self._note(f"dropped a malformed reply: {exc}", level="WARNING")
                continue
            peer = peer_name(reply.server)
            if reply.rid != body.rid:
                self._log("recv", peer, f"REP rid={reply.rid} "
                                        f"ignored (not the reply to rid={body.rid})")
                continue
            self._log("recv", peer, self._describe_reply(body.op, reply))
            return reply

    def _poll(self, ms: int) -> bool | None:
        """True if a reply waits, False if none came within ``ms``; None if the socket
        lost its connection meanwhile (only when watching)."""
        if self._monitor is None:
            return bool(self._socket.poll(ms))
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        ready = dict(poller.poll(ms))
        if self._socket in ready:
            return True
        if self._monitor not in ready:
            return False
        while self._monitor.poll(0):
            self._monitor.recv_multipart()         # EVENT_DISCONNECTED: nothing else asked
        return None

    # --- replies ------------------------------------------------------------
    @staticmethod
    def _describe_reply(op: str, reply: protocol.Reply) -> str:
        if reply.ok:
            summary = describe_result(reply.result) if reply.result is not None else ""
            return f"{op} ok rid={reply.rid} {summary}".rstrip()
        return f"{op} error {reply.code or protocol.ERR_INTERNAL} rid={reply.rid}: {reply.error or ''}"

    @staticmethod
    def _result_of(reply: protocol.Reply) -> dict:
        if reply.result is None:
            raise ClientError(protocol.ERR_INTERNAL, "the reply carries no result")
        return {**reply.result, "server": reply.server}

    @staticmethod
    def _error_of(reply: protocol.Reply) -> ClientError:
        code = reply.code or protocol.ERR_INTERNAL
        return ClientError(code, reply.error or f"request failed ({code})")

    def _synchronize_clock(self, reply: protocol.Reply, sent_at: float) -> None:
        """Cristian: the server read its clock as it replied, so the time now
        lies within [time, time + rtt]; take the middle, time + rtt/2.

        A clock already inside that interval is left alone: the estimate is no
        better than it. Only servers keep a synchronized clock (Berkeley); a
        reply from the broker itself (``server`` is None) does not correct ours.
        """
        if reply.server is None:
            return
        rtt = time.monotonic() - sent_at
        delta = cristian(self.clock, reply.time, rtt)
        self.clock_correction += delta
        if abs(delta) > CLOCK_NOTE_THRESHOLD:
            self._note(f"clock corrected by {delta * 1000:+.1f} ms from "
                       f"{peer_name(reply.server)} (rtt {rtt * 1000:.1f} ms)")

    # --- logging --------------------------------------------------------------
    def _log(self, direction: str, peer: str, what: str) -> None:
        if self.log is not None:
            self.log.line(direction, peer, what)

    def _note(self, what: str, level: str = "INFO") -> None:
        if self.log is not None:
            self.log.note(what, level)
