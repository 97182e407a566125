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
"""
from __future__ import annotations

import hashlib
import itertools
import signal
import time
from dataclasses import dataclass, field

import msgspec
import zmq

from common import keys
from common import protocol as P
from common import sockets
from common import startup
from common.clock import LamportClock, PhysicalClock
from common.config import Config
from common.gc_pacer import GcPacer
from common.log import ProcessLog, ReplyNames, client_peer

from broker.clock_follow import ClockFollower
from broker.fast_path import CapturePace, FastLog, FastPath
from broker.proxy import ProxyThread
from broker.throttle import LoginThrottle

ALLOWLIST_EVERY = 1.0
"""Seconds between two looks at the allowlist's folder (the ZAP handler also looks
at each new connection, so a key admitted a moment ago is let in at once)."""

CAPTURE_BURST = 5000
"""Copies read at most in one turn (the capture socket queues up to ``CAPTURE_HWM``)."""

DROPPING_LIMIT = 10_000
"""User connections whose dropped replies are counted at most (then the count restarts)."""


@dataclass
class ServerEntry:
    """One server as the broker sees it."""
    id: int
    identity: bytes
    expiry: float                       # monotonic: alive while now < expiry
    phase: str = "joining"
    info: dict = field(default_factory=dict)
    left: bool = False                  # said LEAVE
    pooled: bool = False                # READY since it last left the pool

    def alive(self, now: float) -> bool:
        return not self.left and now < self.expiry

    def serving(self, now: float) -> bool:
        """In the pool: alive, serving, and admitted by a READY."""
        return self.pooled and self.phase == "serving" and self.alive(now)


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
        self.servers: dict[int, ServerEntry] = {}
        self.reply_names = ReplyNames()          # replies logged to the user, by name
        self._by_identity: dict[bytes, int] = {}
        self._rr = itertools.count()
        self._heartbeat_at = 0.0
        self._allowlist_at = 0.0
        self.running = True
        self.requests = 0
        self.replies_dropped = 0
        self._dropping: dict[bytes, int] = {}      # user connection -> replies dropped in a row
        self._impostors = keys.Tally()           # (key's id, claim, type) -> refusals
        self.gc = GcPacer()
        self.throttle = LoginThrottle(config.login_free_failures, config.login_delay,
                                      config.login_max_delay)
        self.clock_follow = ClockFollower(config, self.clock, self.log)

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
                wake = min(self._heartbeat_at, self.log.flush_if_due() or self._heartbeat_at,
                           pace.until or self._heartbeat_at)
                timeout = max(0.0, wake - time.monotonic())
                events = dict(poller.poll(sockets.poll_ms(min(timeout, 0.25))))
                if self.backend.sock in events:
                    self._drain(self.backend.sock, self.on_backend, P.recv_from)
                if self.frontend.sock in events:
                    self._drain(self.frontend.sock, self.on_frontend)
                if self.capture in events:
                    self._drain(self.capture, self.fast_log.on_copy, limit=CAPTURE_BURST)
                    pace.read(time.monotonic())
                    poller.modify(self.capture, 0)            # the copies wait a while
                elif pace.reopens(time.monotonic()):
                    poller.modify(self.capture, zmq.POLLIN)
                self.log.guard(self.send_heartbeats)
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
            self.reply(client, req.rid, self.status())
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
            entry = self.pick_server(req.server, now, req)
            if entry is None:
                what = (f"server {req.server} is not serving" if req.server
                        else self.why_none_serving(now))
                code = P.ERR_NO_SUCH_SERVER if req.server else P.ERR_UNAVAILABLE
                self.log.recv(peer, f"{req.op} rid={req.rid} refused: {what}")
                self.reply_error(client, req.rid, code, what)
                return
            try:                        # the body was validated: relayed as it came
                self.backend.relay(P.REQUEST, raw_body, entry.identity, client,
                                   flags=zmq.NOBLOCK)
            except zmq.ZMQError:        # EHOSTUNREACH: it went away; drop it and pick again
                self.forget(entry, "unreachable")
                continue
            self.log.line("route", f"{peer}->server-{entry.id}", f"{req.op} rid={req.rid}")
            self.reply_names.asked(req.rid, peer)
            return

    def why_none_serving(self, now: float) -> str:
        """What a user is told when no server is in the pool: the best reach of any live
        server when none reaches a majority (``unavailable: 1 of 3 servers reachable``)."""
        live = [e for e in self.servers.values() if e.alive(now) and e.info.get("members")]
        if live:
            best = max(live, key=lambda e: e.info.get("reachable", 0))
            reachable, members = best.info.get("reachable", 0), len(best.info["members"])
            if reachable < members // 2 + 1:
                return f"unavailable: {reachable} of {members} servers reachable"
        return "no server is serving; retry"

    def pick_server(self, pinned: int | None, now: float,
                    req: P.Request | None = None) -> ServerEntry | None:
        if pinned is not None:
            entry = self.servers.get(pinned)
            return entry if entry and entry.serving(now) else None
        pool = [e for e in self.servers.values() if e.serving(now)]
        if not pool:
            return None
        if req is not None and req.op in P.SEEN_OPS:
            # one server decides what a user has seen: two listens of one user
            # parked on two servers would each mark (and push) the same items
            return max(pool, key=lambda e: _home_rank(req.user, e.id))
        return pool[next(self._rr) % len(pool)]

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
        entry_id = self._by_identity.get(identity)
        if entry_id is not None:
            self.servers[entry_id].expiry = time.monotonic() + self.config.server_timeout
        if route:
            if isinstance(msg, P.Reply):
                self.forward_reply(identity, route, msg, frames[-1])
            else:
                self.log.warn(f"dropped {msg.TYPE} routed to a client")
        elif isinstance(msg, P.Ready):
            self.on_ready(identity, msg)
        elif isinstance(msg, P.Heartbeat):
            self.on_hb(identity, msg)
        elif isinstance(msg, P.Leave):
            self.on_leave(identity, msg)
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

    def forward_reply(self, identity: bytes, route: bytes, msg: P.Reply, raw_body: bytes) -> None:
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
        server = self._by_identity.get(identity, "?")
        failed = f" (login failures in a row: {failures})" if failures else ""
        self.log.line("reply", f"server-{server}->{self.reply_names.peer(msg.rid, route)}",
                      f"REP rid={msg.rid} ok={msg.ok}{failed}")

    def _register(self, identity: bytes, server_id: int) -> ServerEntry:
        entry = self.servers.get(server_id)
        if entry is None or entry.identity != identity:
            if entry is not None:
                self._by_identity.pop(entry.identity, None)
            entry = ServerEntry(server_id, identity, 0.0)
            self.servers[server_id] = entry
            self._by_identity[identity] = server_id
            self.log.recv(f"server-{server_id}", "registered")
        entry.expiry = time.monotonic() + self.config.server_timeout
        return entry

    def on_ready(self, identity: bytes, msg: P.Ready) -> None:
        entry = self._register(identity, msg.id)
        entry.left = False                       # only READY brings a leaver back
        entry.phase = "serving"
        entry.pooled = True
        where = f" (peers dial it at {msg.address})" if msg.address else ""
        self.log.recv(f"server-{entry.id}", f"READY: joins the pool{where}")

    def on_hb(self, identity: bytes, msg: P.Heartbeat) -> None:
        if msg.id is None or msg.status is None or msg.status.id != msg.id:
            self.log.warn("dropped a heartbeat without a server's status on the backend")
            return
        entry = self._register(identity, msg.id)
        phase = msg.status.phase
        if entry.left and phase in ("joining", "syncing", "halted"):
            # a new life after a graceful leave, or a server halted on its disk that
            # said LEAVE and heartbeats on: shown in status, never in the pool (only
            # READY puts a server there, and only a "serving" one is picked)
            entry.left = False
        if phase != entry.phase:
            self.log.recv(f"server-{entry.id}", f"phase {entry.phase} -> {phase}"
                          + ("" if entry.pooled or phase != "serving" else
                             " (not in the pool until its READY)"))
            entry.phase = phase
        if phase != "serving":
            entry.pooled = False
        entry.info = P.to_builtins(msg.status)
        self.follow_clock(entry.id, msg)

    def follow_clock(self, server_id: int, msg: P.Heartbeat) -> None:
        """Keep the broker's physical clock on the coordinator's (the highest epoch's),
        compensating the heartbeat's round trip, by bounded steps: broker/clock_follow.py."""
        self.clock_follow.on_HB(server_id, msg, time.monotonic())

    def on_leave(self, identity: bytes, msg: P.Leave) -> None:
        entry = self.servers.get(msg.id)
        if entry is not None and entry.identity == identity:
            entry.left = True
            entry.phase = "gone"
            entry.pooled = False
            self.log.recv(f"server-{entry.id}", "LEAVE: out of the pool")

    def forget(self, entry: ServerEntry, why: str) -> None:
        entry.expiry = 0.0
        entry.phase = "gone"
        entry.pooled = False
        self.log.note(f"server-{entry.id} out of the pool: {why}")

    def send_heartbeats(self) -> None:
        """Idempotent periodic job: heartbeat every known server, purge the silent."""
        now = time.monotonic()
        if now < self._heartbeat_at:
            return
        self._heartbeat_at = now + self.config.heartbeat_interval
        for entry in self.servers.values():
            if entry.phase != "gone" and not entry.alive(now):
                self.forget(entry, f"silent for {self.config.server_timeout * 1000:.0f} ms")
            if entry.phase == "gone":
                continue
            try:
                hb = msgspec.structs.replace(self.clock_follow.heartbeat(time.monotonic()),
                                             pooled=entry.pooled)
                self.backend.send(hb, entry.identity, b"", flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def status(self) -> dict:
        now = time.monotonic()
        servers = []
        for entry in sorted(self.servers.values(), key=lambda e: e.id):
            alive = entry.alive(now)
            row = {**entry.info, "id": entry.id, "alive": alive,
                   "phase": entry.phase if alive else "gone", "pooled": entry.serving(now)}
            servers.append(row)
        live = [s for s in servers if s["alive"]]
        best = max(live, key=lambda s: s.get("epoch", -1), default=None)
        return {"servers": servers,
                "coordinator": best.get("coordinator") if best else None,
                "epoch": best.get("epoch") if best else None,
                "broker": {"lamport": self.lamport.value,
                           "requests": self.requests + self.fast_log.requests,
                           "fast_requests": self.fast_log.requests,
                           "replies_dropped": self.replies_dropped}}


def _server_number(who: str) -> int | None:
    """``server-7`` -> 7 (the ids keys are registered under); None for anything else."""
    name, _, number = who.partition("-")
    return int(number) if name == "server" and number.isdigit() else None


def _home_rank(user: str, server_id: int) -> int:
    """Rendezvous hashing: a user's home is the serving server that ranks highest."""
    digest = hashlib.blake2b(f"{user}/{server_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def serve(config: Config, clock: PhysicalClock | None = None) -> None:
    broker = Broker(config, clock)
    signal.signal(signal.SIGTERM, broker.stop)
    signal.signal(signal.SIGINT, broker.stop)
    broker.run()
