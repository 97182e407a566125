"""A server's link to the broker's fast path: users' ordinary requests in, their replies out.

The broker moves ``FAST_OPS`` requests to its servers through a ZeroMQ proxy in C
(``broker/fast_path.py``), on a port of its own; a server connects a DEALER to it
only while it serves (``open`` when its phase becomes serving, ``close`` when it
stops), so the proxy never hands a request to one that cannot answer it. Nobody
checked such a request on the way: each is validated here, must be one of
``FAST_OPS`` and never pinned, or it is refused with a line now and then. A ``REQS``
carries several of one user's requests, taken in order.

The replies of a loop turn wait in ``FastReplies`` and go out together at the turn's
end (``send_replies``, one ``REPS`` per connection); closing waits for the turn's
end too, so the replies of that turn still go out. A reply's route is a
``FastRoute``: it goes out on this socket, never the routed one.

It holds no reference to the server: it is given a socket factory, the Lamport
clock (through ``protocol.Endpoint``), the process's CURVE setup and the client
desk's ``on_REQ`` to hand each request to.
"""
from __future__ import annotations

import time
from typing import Callable

import zmq

from common import keys
from common import protocol as P
from common.clock import PhysicalClock
from common.config import Config
from common.log import ProcessLog
from servers.fast_replies import FastReplies


class FastRoute(bytes):
    """A user's ROUTER identity on the broker's fast path: a reply to it goes out on the
    fast socket, never the routed one (whose users' identities are another ROUTER's,
    and may be the same bytes)."""


class FastLink:
    """The fast path's DEALER of one server, open only while it serves."""

    def __init__(self, server_id: int, config: Config, lamport, clock: PhysicalClock,
                 log: ProcessLog, socket: Callable, close_socket: Callable,
                 security: keys.Security, take: Callable) -> None:
        self.id = server_id
        self.config = config
        self.lamport = lamport
        self.clock = clock
        self.log = log
        self.socket = socket
        self.close_socket = close_socket
        self.security = security
        self.take = take                         # the client desk's on_REQ
        self.endpoint: P.Endpoint | None = None
        self.closing = False                     # close the fast socket at the turn's end
        self.refused = keys.Tally()
        self.out = FastReplies()                 # this turn's fast replies, sent at its end

    def add(self, route: FastRoute, reply: P.Reply) -> None:
        if self.endpoint is not None:            # else not serving since: its user retries
            self.out.add(route, reply)           # sent at the turn's end (send_replies)

    def send_replies(self) -> None:
        """This turn's fast replies, together: a ``REPS`` per connection, or a ``REP``."""
        if self.endpoint is None:
            self.out.take()
            return
        for route, msg_type, body in self.out.take():
            try:
                self.endpoint.relay(msg_type, body, route, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass                             # the broker is far behind: its users retry

    def open(self) -> None:
        """Serving: take requests from the broker's fast path."""
        self.closing = False
        if self.endpoint is not None:
            return
        sock = self.security.client(self.socket(zmq.DEALER, self.on_fast))
        sock.sndhwm = sock.rcvhwm = self.config.client_hwm
        sock.connect(self.config.endpoint(self.config.fast_backend_port))
        # a user's stamp may lead my clock by as much as the broker lets it lead the broker's
        self.endpoint = P.Endpoint(sock, P.FAST_TO_SERVER, self.lamport,
                                   max_lead=P.MAX_CLIENT_LEAD)
        self.log.note("fast path open: taking requests from the broker's proxy")

    def close(self) -> None:
        """No longer serving: take no more fast requests (the ones queued to me are
        lost, and their users retry); the replies of this turn still go out."""
        if self.endpoint is not None:
            self.closing = True

    def close_now(self) -> None:
        self.closing = False
        self.send_replies()
        if self.endpoint is not None:
            self.close_socket(self.endpoint.sock)
            self.endpoint = None
            self.log.note("fast path closed")

    def on_fast(self, frames: list[bytes]) -> None:
        """A user's request through the proxy, or several in a ``REQS``: each validated
        here (nobody checked it on the way), one of ``FAST_OPS``, never pinned; anything
        else is refused."""
        if self.endpoint is None or self.closing:
            return
        try:
            incoming = self.endpoint.receive(frames)
        except P.ProtocolError as exc:
            self._refuse_fast(frames, P.ERR_BAD_REQUEST, str(exc))
            return
        msg, route = incoming.msg, FastRoute(incoming.envelope[0])
        if not route:
            self._refuse_fast(frames, P.ERR_BAD_REQUEST, f"{incoming.type} without a route")
        elif isinstance(msg, P.Requests):
            now = time.monotonic()
            with self.log.moment():             # one message: its lines share its moment
                for body in msg.reqs:           # in order: one user's, as it sent them
                    try:
                        self._take_fast(route, P.decode_request(body), now)
                    except P.ProtocolError as exc:
                        self._refuse_one(route, P.rid_of(bytes(body)), P.ERR_BAD_REQUEST,
                                         str(exc))
        else:
            self._take_fast(route, msg, time.monotonic())

    def _take_fast(self, route: FastRoute, msg: P.Request, now: float) -> None:
        if msg.op not in P.FAST_OPS or msg.server is not None:
            what = f"{msg.op} pinned to a server" if msg.server is not None else msg.op
            self._refuse_one(route, msg.rid, P.ERR_BAD_REQUEST,
                             f"{what} goes through the broker's routed port "
                             f"({self.config.frontend_port}), not the fast path")
        else:
            self.take(route, msg, now)

    def _refuse_fast(self, frames: list[bytes], code: str, why: str) -> None:
        """Say no to a fast message we could not read (if it has a route)."""
        route = FastRoute(frames[0]) if len(frames) == 4 and frames[0] else None
        self._refuse_one(route, P.rid_of(frames[-1]) if frames else "?", code, why)

    def _refuse_one(self, route: FastRoute | None, rid: str, code: str, why: str) -> None:
        """Say no to one fast request (if it has a route), with a line now and then."""
        count = self.refused.count(why[:80])
        if count:
            self.log.warn(f"refused a fast-path request rid={rid} ({count} so far): {why}")
        if route:
            self.add(route, P.Reply(rid=rid, ok=False, server=self.id,
                                    time=self.clock.now(), code=code, error=why))
