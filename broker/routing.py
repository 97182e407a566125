"""The broker's routed path: users' requests to a server of the pool, replies back.

A request on the frontend is checked (its size, its envelope and body, its Lamport
stamp); ``status`` the broker answers itself; a login meets the throttle first
(``broker/throttle.py``: the broker sees every login and its reply, so it slows
password guesses for the whole cluster). Anything else goes, as it came, to the
server the pool picks (``broker/pool.py``); one that went away meanwhile is
dropped from the pool and the next one is picked, and with none in the pool the
user is told why. A server's reply goes back to the user it names, and its log
line names the user by the name its request came under (``ReplyNames``).

Replies that cannot reach their user (a user not reading, ``client_hwm`` replies
behind) are dropped, counted and said now and then, never waited for: the loop
serves everyone else meanwhile.

No sockets of its own: it sends on the broker's frontend and backend endpoints.
"""
from __future__ import annotations

import time
from typing import Callable

import zmq

from common import protocol as P
from common.clock import PhysicalClock
from common.config import Config
from common.log import ProcessLog, ReplyNames, client_peer

from broker.pool import ServerPool
from broker.throttle import LoginThrottle

DROPPING_LIMIT = 10_000
"""User connections whose dropped replies are counted at most (then the count restarts)."""


class Router:
    """The broker's routed-path role: requests in, to a server, replies out."""

    def __init__(self, config: Config, clock: PhysicalClock, log: ProcessLog,
                 frontend: P.Endpoint, backend: P.Endpoint, pool: ServerPool,
                 status: Callable[[], dict]) -> None:
        self.config = config
        self.clock = clock
        self.log = log
        self.frontend = frontend
        self.backend = backend
        self.pool = pool
        self._status = status                    # the broker's status answer
        self.reply_names = ReplyNames()          # replies logged to the user, by name
        self.requests = 0
        self.replies_dropped = 0
        self._dropping: dict[bytes, int] = {}      # user connection -> replies dropped in a row
        self.throttle = LoginThrottle(config.login_free_failures, config.login_delay,
                                      config.login_max_delay)

    # --- clients ---------------------------------------------------------------
    def on_frontend(self, frames: list[bytes]) -> None:
        client = frames[0]
        if sum(len(f) for f in frames) > P.MAX_REQUEST_BYTES:
            self.reply_error(client, "?", P.ERR_BAD_REQUEST, "request too large")
            return
        try:
            incoming = self.frontend.receive(frames)
        except P.ProtocolError as exc:
            rid = P.rid_of(frames[-1]) if len(frames) == 4 else "?"
            self.log.recv(client_peer(client), f"bad request rid={rid}: {exc}")
            self.reply_error(client, rid, P.ERR_BAD_REQUEST, str(exc))
            return
        req = incoming.msg
        peer = req.user or "anonymous"
        self.requests += 1
        if req.op == P.OP_STATUS:
            self.log.recv(peer, f"status rid={req.rid}")
            self.reply(client, req.rid, self._status())
            return
        if req.op == P.OP_LOGIN:
            refusal = self.throttle.refuse(req.user, req.rid, time.monotonic())
            if refusal is not None:
                code, why = refusal
                self.log.recv(peer, f"login rid={req.rid} {code}: {why}")
                self.reply_error(client, req.rid, code, why)
                return
        self.route(client, peer, req, frames[-1])

    def route(self, client: bytes, peer: str, req: P.Request, raw_body: bytes) -> None:
        now = time.monotonic()
        while True:
            entry = self.pool.pick(req.server, now, req)
            if entry is None:
                what = (f"server {req.server} is not serving" if req.server
                        else self.pool.why_none_serving(now))
                code = P.ERR_NO_SUCH_SERVER if req.server else P.ERR_UNAVAILABLE
                self.log.recv(peer, f"{req.op} rid={req.rid} refused: {what}")
                self.reply_error(client, req.rid, code, what)
                return
            try:                        # the body was validated: relayed as it came
                self.backend.relay(P.REQUEST, raw_body, entry.identity, client,
                                   flags=zmq.NOBLOCK)
            except zmq.ZMQError:        # EHOSTUNREACH: it went away; drop it and pick again
                self.pool.forget(entry, "unreachable")
                continue
            self.log.line("route", f"{peer}->server-{entry.id}", f"{req.op} rid={req.rid}")
            self.reply_names.asked(req.rid, peer)
            return

    def reply(self, client: bytes, rid: str, result: dict) -> None:
        self._send_front(client, P.Reply(rid=rid, ok=True, server=None, time=self.clock.stamp(),
                                         result=result), f"ok rid={rid}")

    def reply_error(self, client: bytes, rid: str, code: str, error: str) -> None:
        self._send_front(client, P.Reply(rid=rid, ok=False, server=None, time=self.clock.stamp(),
                                         code=code, error=error),
                         f"error {code} rid={rid}: {error}")

    def _send_front(self, client: bytes, reply: P.Reply, what: str) -> None:
        try:
            self.frontend.send(reply, client, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self.reply_lost(client, reply.rid, exc)
            return
        self.log.send(client_peer(client), what)
        self.reached(client)

    def reached(self, client: bytes) -> None:
        if self._dropping and client in self._dropping:
            self.log.note(f"{client_peer(client)} reads again, "
                          f"after {self._dropping.pop(client)} replies dropped")

    def reply_lost(self, client: bytes, rid: str, exc: zmq.ZMQError) -> None:
        """A reply that cannot reach its user: gone (it retries on a new socket if it
        still waits), or not reading and ``client_hwm`` replies behind."""
        if not isinstance(exc, zmq.Again):
            return
        self.replies_dropped += 1
        if len(self._dropping) > DROPPING_LIMIT:
            self._dropping.clear()
        dropped = self._dropping[client] = self._dropping.get(client, 0) + 1
        if dropped == 1 or dropped % 1000 == 0:          # a line now and then, not per reply
            self.log.warn(f"dropped reply rid={rid} to {client_peer(client)} ({dropped} so far): "
                          f"{self.config.client_hwm} replies already queued (not reading?)")

    # --- servers' replies --------------------------------------------------------
    def forward_reply(self, server: int | None, route: bytes, msg: P.Reply,
                      raw_body: bytes) -> None:
        """A server's reply to the user ``route``; ``server``: the pool's id for the
        server's identity (None: not registered)."""
        failures = None
        if self.throttle.by_rid:
            failures = self.throttle.answered(msg.rid, msg.ok, msg.code, time.monotonic(),
                                              P.ERR_UNAUTHORIZED)
        try:
            self.frontend.relay(P.REPLY, raw_body, route, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self.reply_lost(route, msg.rid, exc)
            return
        self.reached(route)
        failed = f" (login failures in a row: {failures})" if failures else ""
        self.log.line("reply", f"server-{'?' if server is None else server}->"
                               f"{self.reply_names.peer(msg.rid, route)}",
                      f"REP rid={msg.rid} ok={msg.ok}{failed}")
