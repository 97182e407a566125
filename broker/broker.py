"""The broker: a load-balancing ROUTER/ROUTER request path and the PUB/SUB bus.

Request path (the ZeroMQ Guide's Paranoid Pirate queue, simplified):
clients' DEALERs connect to the frontend ROUTER; servers' DEALERs connect to
the backend ROUTER and announce themselves with READY and HEARTBEAT. The
broker spreads requests round-robin over the servers that are alive and
serving; any traffic from a server counts as proof of life, and a server
silent for ``server_timeout`` leaves the pool. Only READY puts a server in the
pool -- a server sends it once it has caught up -- never a heartbeat, however
"serving" it says it is: one cut off may have missed writes, and its queued
heartbeats arrive after the heal, before it has caught up. Each heartbeat the
broker sends says whether the server is pooled, so a current server that was
dropped (or a broker that restarted) gets a fresh READY. The broker answers
``status`` itself from what the servers' heartbeats told it.

Fast path (``broker/fast_path.py``): the operations any server may answer
(``protocol.FAST_OPS``) also have a port of their own, where ZeroMQ's proxy, in C,
moves requests and replies without this loop; the loop only reads the proxy's
copies for the log (one line per request). What needs a choice stays here: logins
(the throttle), ``status``, a user's home server, pinned requests, and every retry.

Bus: an XSUB/XPUB proxy (``zmq.proxy_steerable``, in C, on its own thread)
that relays replication, heartbeat, election and clock traffic between the
servers. The broker does not read bus traffic.

Logins: the broker sees every login and its reply, so it throttles password
guesses for the whole cluster (``broker/throttle.py``). It checks no password and
no token itself: the servers do.

Where: this module holds the sockets, the loop and the backend's dispatch (with
the check that a server's key speaks only for that server); the pool of servers,
their READY, HB and LEAVE and the broker's heartbeats are ``broker/pool.py``; the
routed requests, the broker's own replies and the servers' replies on their way
back are ``broker/routing.py``.
"""
from __future__ import annotations

import signal
import time

import zmq

from common import keys
from common import protocol as P
from common import sockets
from common import startup
from common.clock import LamportClock, PhysicalClock
from common.config import Config
from common.gc_pacer import GcPacer
from common.log import ProcessLog

from broker.clock_follow import ClockFollower
from broker.fast_path import CapturePace, FastLog, FastPath
from broker.pool import ServerPool
from broker.proxy import ProxyThread
from broker.routing import Router

ALLOWLIST_EVERY = 1.0
"""Seconds between two looks at the allowlist's folder (the ZAP handler also looks
at each new connection, so a key admitted a moment ago is let in at once)."""

CAPTURE_BURST = 5000
"""Copies read at most in one turn (the capture socket queues up to ``CAPTURE_HWM``)."""

class Bus(ProxyThread):
    """The XSUB/XPUB proxy that relays the servers' bus."""
    name = "bus"

    def __init__(self, ctx: zmq.Context, config: Config, security: keys.Security) -> None:
        self._config = config
        self._security = security
        super().__init__(ctx)

    def open_sockets(self, made: list[zmq.Socket]) -> tuple:
        cfg = self._config
        xsub, xpub = self._ctx.socket(zmq.XSUB), self._ctx.socket(zmq.XPUB)
        made += [xsub, xpub]
        for sock in (xsub, xpub):
            sockets.tune(sock, cfg)
            sock.sndhwm = cfg.hwm
            sock.rcvhwm = cfg.hwm
        xsub.setsockopt(zmq.MAXMSGSIZE, P.MAX_BUS_BYTES)
        for sock in (xsub, xpub):            # ironhouse: cluster keys only, both ways
            self._security.serve(sock)
        startup.bind(xsub, cfg.bind_endpoint(cfg.bus_in_port))
        startup.bind(xpub, cfg.bind_endpoint(cfg.bus_out_port))
        return xsub, xpub, None


class Broker:
    def __init__(self, config: Config, clock: PhysicalClock | None = None) -> None:
        self.config = config
        self.lamport = LamportClock()
        self.clock = clock or PhysicalClock()
        # first: a second broker on the same log folder stops here, having written nothing
        self.log = ProcessLog("broker", config.log_path("broker"), self.lamport, self.clock,
                              flush_every=config.log_flush_every, exclusive=True)
        self.ctx = zmq.Context()
        self.ctx.linger = 0
        # CURVE on every socket, the ZAP handler up before any binds (the bus proxy
        # thread shares this context, so this one handler serves its sockets too)
        self.security = keys.Security(self.ctx, config.data_dir, keys.BROKER)
        # users are strangers: a small queue each (one that stops reading costs at
        # most client_hwm replies), requests of bounded size, stamps not far ahead;
        # stonehouse: encrypted, any client key (users prove who they are in requests)
        frontend = self._bind(config.frontend_port, config.client_hwm, 4 * P.MAX_REQUEST_BYTES,
                              keys.CLIENTS_DOMAIN)
        frontend.setsockopt(zmq.ROUTER_MANDATORY, 1)   # a reply that cannot be queued is said
        self.frontend = P.Endpoint(frontend, P.CLIENT_TO_BROKER, self.lamport,
                                   max_lead=P.MAX_CLIENT_LEAD)
        backend = self._bind(config.backend_port, config.hwm, P.MAX_REPLY_BYTES)   # ironhouse
        backend.setsockopt(zmq.ROUTER_MANDATORY, 1)
        backend.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.backend = P.Endpoint(backend, P.SERVER_TO_BROKER, self.lamport)
        self.bus = Bus(self.ctx, config, self.security)
        self.fast = FastPath(self.ctx, config, self.security)
        self.fast_log = FastLog(self.log.line, self.lamport.merge)
        self.capture: zmq.Socket | None = None
        self._fast_said = False
        self._allowlist_at = 0.0
        self.running = True
        self._impostors = keys.Tally()           # (key's id, claim, type) -> refusals
        self.gc = GcPacer()
        self.clock_follow = ClockFollower(config, self.clock, self.log)
        self.pool = ServerPool(config, self.log, self.clock_follow, self.to_server)
        self.router = Router(config, self.clock, self.log, self.frontend, self.backend,
                             self.pool, self.status)

    def _bind(self, port: int, hwm: int, max_message: int,
              domain: str = keys.CLUSTER_DOMAIN) -> zmq.Socket:
        sock = sockets.tune(self.ctx.socket(zmq.ROUTER), self.config)
        sock.sndhwm = hwm
        sock.rcvhwm = hwm
        sock.setsockopt(zmq.MAXMSGSIZE, max_message)
        self.security.serve(sock, domain)
        startup.bind(sock, self.config.bind_endpoint(port))
        return sock

    # --- main loop ------------------------------------------------------------
    def run(self) -> None:
        self.bus.start()
        self.fast.start()
        self.capture = self.ctx.socket(zmq.SUB)
        self.capture.rcvhwm = 0                  # the PUB's queue bounds it
        self.capture.setsockopt(zmq.SUBSCRIBE, b"")
        self.capture.connect(self.fast.capture)
        cfg = self.config
        self.log.note(f"broker up: frontend :{cfg.frontend_port} backend :{cfg.backend_port} "
                      f"bus :{cfg.bus_in_port}->:{cfg.bus_out_port} fast path "
                      f":{cfg.fast_frontend_port}->:{cfg.fast_backend_port}")
        poller = zmq.Poller()
        poller.register(self.frontend.sock, zmq.POLLIN)
        poller.register(self.backend.sock, zmq.POLLIN)
        poller.register(self.capture, zmq.POLLIN)
        self.gc.settle()
        pace = CapturePace()
        try:
            while self.running:
                heartbeat_at = self.pool.heartbeat_at
                wake = min(heartbeat_at, self.log.flush_if_due() or heartbeat_at,
                           pace.until or heartbeat_at)
                timeout = max(0.0, wake - time.monotonic())
                events = dict(poller.poll(sockets.poll_ms(min(timeout, 0.25))))
                if self.backend.sock in events:
                    self._drain(self.backend.sock, self.on_backend, P.recv_from)
                if self.frontend.sock in events:
                    self._drain(self.frontend.sock, self.router.on_frontend)
                if self.capture in events:
                    self._drain(self.capture, self.fast_log.on_copy, limit=CAPTURE_BURST)
                    pace.read(time.monotonic())
                    poller.modify(self.capture, 0)            # the copies wait a while
                elif pace.reopens(time.monotonic()):
                    poller.modify(self.capture, zmq.POLLIN)
                self.log.guard(self.pool.send_heartbeats)
                self.log.guard(self.allowlist_changes)
                self.log.guard(self.check_fast)
                self.log.flush_if_due()
                self.gc.tick(time.monotonic())
        finally:
            self.close()

    def _drain(self, sock: zmq.Socket, handler, receive=None, limit: int = 500) -> None:
        """Read up to ``limit`` messages; the poll said the first one is there. With
        ``receive`` (``P.recv_from``), the handler also gets who sent each one."""
        for _ in range(limit):
            try:                        # NOBLOCK: the end of the burst raises once
                if receive is None:
                    self.log.guard(handler, P.recv(sock, zmq.NOBLOCK))
                else:
                    self.log.guard(handler, *receive(sock, zmq.NOBLOCK))
            except zmq.Again:
                return

    def allowlist_changes(self) -> None:
        """Periodic: the allowlist re-read when its folder changed, and each change (and
        each refused key) said once, from this loop (the ZAP thread writes no log)."""
        now = time.monotonic()
        if now < self._allowlist_at:
            return
        self._allowlist_at = now + ALLOWLIST_EVERY
        self.security.log_news(self.log)

    def check_fast(self) -> None:
        """Said once: a proxy stopped by itself (without the fast path, users' retries
        take the routed path)."""
        problem = self.fast.problem() or self.bus.problem()
        if problem and not self._fast_said:
            self._fast_said = True
            self.log.warn(problem)

    def close(self) -> None:
        self.log.note("broker stopping")
        self.bus.stop()
        self.fast.stop()
        if self.capture is not None:
            self._drain(self.capture, self.fast_log.on_copy, limit=CAPTURE_BURST)  # the last lines
            self.capture.close(0)
        self.frontend.sock.close(0)
        self.backend.sock.close(0)
        self.security.stop()
        self.ctx.term()
        self.log.close()

    def stop(self, *_args) -> None:
        self.running = False

    # --- servers ---------------------------------------------------------------
    def on_backend(self, frames: list[bytes], who: str) -> None:
        """A server's message; ``who`` is the id its connection's key is registered
        under (``server-N``): it must be the server the identity (``server-N.<random>``,
        ``keys.dealer_identity``) and the message name."""
        try:
            incoming = self.backend.receive(frames)
        except P.ProtocolError as exc:
            self.log.warn(f"dropped a bad backend message: {exc}")
            return
        identity, route = incoming.envelope
        msg = incoming.msg
        claimed = msg.server if isinstance(msg, P.Reply) else msg.id
        if identity.partition(b".")[0] != who.encode() or \
                (claimed is not None and claimed != _server_number(who)):
            self.refuse_impostor(who, identity, msg, claimed)
            return
        server = self.pool.touch(identity)
        if route:
            if isinstance(msg, P.Reply):
                self.router.forward_reply(server, route, msg, frames[-1])
            else:
                self.log.warn(f"dropped {msg.TYPE} routed to a client")
        elif isinstance(msg, P.Ready):
            self.pool.on_READY(identity, msg)
        elif isinstance(msg, P.Heartbeat):
            self.pool.on_HB(identity, msg)
        elif isinstance(msg, P.Leave):
            self.pool.on_LEAVE(identity, msg)
        else:
            self.log.warn(f"dropped {msg.TYPE} without a route on the backend")

    def refuse_impostor(self, who: str, identity: bytes, msg, claimed) -> None:
        """A cluster key speaking for another server: refused, said once per pair (and
        every thousandth time), nothing changed."""
        what = f"identity {identity[:40]!r}" + (f", id {claimed}" if claimed is not None else "")
        count = self._impostors.count((who, what, msg.TYPE))
        if count:
            self.log.warn(f"dropped {msg.TYPE} claiming {what}: its connection's key is "
                          f"{who or 'unknown'}'s ({count} so far)")

    def to_server(self, msg: P.Heartbeat, identity: bytes) -> None:
        """A heartbeat to one server, never waited for (one that cannot take it now
        misses it: the next comes in ``heartbeat_interval``)."""
        try:
            self.backend.send(msg, identity, b"", flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def status(self) -> dict:
        router = self.router
        return {**self.pool.status(),
                "broker": {"lamport": self.lamport.value,
                           "requests": router.requests + self.fast_log.requests,
                           "fast_requests": self.fast_log.requests,
                           "replies_dropped": router.replies_dropped}}


def _server_number(who: str) -> int | None:
    """``server-7`` -> 7 (the ids keys are registered under); None for anything else."""
    name, _, number = who.partition("-")
    return int(number) if name == "server" and number.isdigit() else None


def serve(config: Config, clock: PhysicalClock | None = None) -> None:
    broker = Broker(config, clock)
    signal.signal(signal.SIGTERM, broker.stop)
    signal.signal(signal.SIGINT, broker.stop)
    broker.run()
