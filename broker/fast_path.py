"""The broker's fast path: ordinary requests through ZeroMQ's own proxy, in C.

    users' DEALERs -> ROUTER :fast_frontend_port --zmq.proxy--> DEALER :fast_backend_port
                                                                  <- serving servers' DEALERs

``zmq.proxy_steerable`` runs on a thread of its own and moves every request and
reply without the broker's Python loop: the DEALER hands each request to the next
connected server (round robin over the servers whose queue has room), and each
reply finds its user by the ROUTER identity in front of it. The frames pass
untouched, ``[client, type, lamport, body]`` both ways, so a server reads a fast
request exactly as a routed one (``common/protocol/``).

What the routed path's Python loop decided, the fast path gets from elsewhere:

* **Only serving servers get requests**: a server connects its fast socket when it
  starts serving and closes it when it stops (``servers/fast_link.py``), so the DEALER
  only ever knows serving servers.
* **Dead and frozen servers leave within 2 s**: a killed server's connection closes
  at once; a frozen one stops answering ZMTP's PINGs and its connection is closed
  after ``zmq_heartbeat_timeout`` (0.9 s, ``common/sockets.py``). The requests
  queued to it are lost, and their users retry under the same request id
  (applied once), on the routed path, which also says why when no server serves.
* **Only some operations** (``protocol.FAST_OPS``): logins (the cluster-wide
  throttle sees them), ``status``, a user's home server (``listen``,
  ``notifications``) and requests pinned to a server go the routed path; a server
  refuses any other operation on its fast socket.
* **Strangers**: the ROUTER is CURVE (any client key, as the routed frontend) with
  the same size bound per frame; the servers decode and validate every request, as
  they do the routed ones (the broker never trusted its own checks for them).

**The log keeps one line per request**, written off the request path: the proxy
copies every message to its capture socket (a PUB: when the broker's loop falls
behind, copies are dropped, never the requests), and the loop reads the copies and
writes one line per reply: user, operation, request id, server, outcome.
"""
from __future__ import annotations

import msgspec
import zmq

from common import keys
from common import protocol as P
from common import sockets
from common import startup
from common.config import Config
from common.log import ReplyNames

from broker.proxy import ProxyThread

CAPTURE_HWM = 100_000
"""Copies the capture socket queues for the broker's loop before it drops them."""


class _Head(msgspec.Struct):
    """The fields of a request or reply body a log line needs (the rest is skipped)."""
    rid: str = "?"
    op: str | None = None
    user: str | None = None
    ok: bool | None = None
    server: int | None = None
    code: str | None = None


class _Heads(msgspec.Struct):
    """The heads of a ``REQS`` or a ``REPS``."""
    reqs: list[_Head] = []
    reps: list[_Head] = []


_head = msgspec.json.Decoder(_Head)
_heads = msgspec.json.Decoder(_Heads)
_REQ, _REP = P.REQUEST.encode(), P.REPLY.encode()
_REQS, _REPS = P.REQUESTS.encode(), P.REPLIES.encode()


class FastPath(ProxyThread):
    """The request proxy; ``capture`` is the address the broker's loop subscribes to
    for the copies."""
    name = "fast-path"

    def __init__(self, ctx: zmq.Context, config: Config, security: keys.Security) -> None:
        self._config = config
        self._security = security
        self.capture = f"inproc://fast-capture-{id(self)}"
        super().__init__(ctx)

    def open_sockets(self, made: list[zmq.Socket]) -> tuple:
        cfg = self._config
        front, back = self._ctx.socket(zmq.ROUTER), self._ctx.socket(zmq.DEALER)
        capture = self._ctx.socket(zmq.PUB)
        made += [front, back, capture]
        # users are strangers: a small queue each, requests of bounded size; no
        # ROUTER_MANDATORY (a reply the proxy cannot deliver is dropped, and its
        # user retries: a send error would end the proxy)
        sockets.tune(front, cfg)
        front.sndhwm = front.rcvhwm = cfg.client_hwm
        front.setsockopt(zmq.MAXMSGSIZE, P.MAX_REQUEST_BYTES)
        self._security.serve(front, keys.CLIENTS_DOMAIN)
        sockets.tune(back, cfg)            # ZMTP heartbeats: a frozen server is dropped
        back.sndhwm = back.rcvhwm = cfg.client_hwm
        back.setsockopt(zmq.MAXMSGSIZE, P.MAX_REPLY_BYTES)
        self._security.serve(back)                          # ironhouse: servers only
        capture.sndhwm = CAPTURE_HWM
        capture.bind(self.capture)
        startup.bind(front, cfg.bind_endpoint(cfg.fast_frontend_port))
        startup.bind(back, cfg.bind_endpoint(cfg.fast_backend_port))
        return front, back, capture


class CapturePace:
    """When the broker's loop reads the copies: whenever one is there, but after a
    reading not again for ``every`` seconds, so it reads them in bursts (at 5,000
    requests/s, a hundred at a time) instead of waking for each one. A wake-up cost
    the loop more than the line it wrote: at 1,500 requests one at a time, the
    broker's CPU per request fell from ~270 to ~200 µs. The lines come at most
    ``every`` late; the requests themselves never wait on it."""

    def __init__(self, every: float = 0.01) -> None:
        self.every = every
        self.until: float | None = None     # while set, the copies wait until then

    def read(self, now: float) -> None:
        """A reading just ended: the next one waits."""
        self.until = now + self.every

    def reopens(self, now: float) -> bool:
        """True once, when the wait is over: the loop listens for copies again."""
        if self.until is None or now < self.until:
            return False
        self.until = None
        return True


class FastLog:
    """The broker loop's reading of the capture copies: one log line per answered
    request, and the count of requests for ``status``. Pure: given frames, it calls
    ``line(direction, peer, what)``; unit-tested without sockets."""

    def __init__(self, line, merge) -> None:
        self._line = line
        self._merge = merge                              # the broker's Lamport clock
        self.names = ReplyNames()                        # rid -> (user, op), for the reply
        self.requests = 0
        self.replies = 0

    def on_copy(self, frames: list[bytes]) -> None:
        """One message the proxy moved, either way: ``[client, type, lamport, body]``,
        one request or reply, or several (``REQS``, ``REPS``)."""
        if len(frames) != 4:
            return                      # a stranger's malformed request: the servers say so
        kind = frames[1]
        try:
            if kind == _REQ or kind == _REP:
                heads = [_head.decode(frames[3])]
            elif kind == _REQS:
                heads = _heads.decode(frames[3]).reqs
            elif kind == _REPS:
                heads = _heads.decode(frames[3]).reps
            else:
                return
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if kind == _REQ or kind == _REQS:
            self.requests += len(heads)
            for head in heads:
                self.names.asked(head.rid, head.user or "anonymous", head.op or "?")
            return
        self.replies += len(heads)
        if frames[2].isdigit() and len(frames[2]) < 17:   # a server's clock: merged
            self._merge(int(frames[2]))
        for head in heads:
            user, op = self.names.take(head.rid) or ("?", "?")
            outcome = "ok" if head.ok else f"error {head.code}"
            server = f"server-{head.server}" if head.server is not None else "?"
            self._line("fast", f"{server}->{user}", f"{op} rid={head.rid} {outcome}")
