"""One server process: its sockets, its event loop, and its phases.

Sockets (all owned by the one loop in ``run``):

* ``broker``  DEALER -> broker backend: client requests in, replies out,
  READY / HEARTBEAT / LEAVE (Paranoid Pirate worker).
* ``pub``     PUB -> bus: EVENT, ACK, BEAT, BYE, election and clock messages.
* ``sub``     SUB <- bus: the same from every other server.
* ``router``  ROUTER on ``peer_port(id)``: answers peers' FETCH.
* ``dealers`` one DEALER per peer we pull events from.

Phases: ``joining`` (listen to the bus to learn the peers) -> ``syncing``
(pull what the peers hold, get the clock set) -> ``serving`` (in the broker's
pool) -> ``leaving`` (SIGTERM: out of the pool, finish, exit).
"""
from __future__ import annotations

import random
import time

import zmq

from common import protocol as P
from common.clock import LamportClock, PhysicalClock
from common.config import Config
from common.gc_pacer import GcPacer
from common.log import ProcessLog, brief, event_brief
from servers.berkeley import BerkeleySync
from servers.catchup import PeerLinks
from servers.client_desk import ClientDesk
from servers.election import Bully
from servers.listeners import Listeners
from servers.peers import JOINING, LEAVING, SERVING, SYNCING, Peers
from servers.replication import Replication
from servers.replication_lag import ReplicationLag
from servers.requests import ClientRequests
from servers.state import SocialState
from servers.store import EventStore

LOGGED_ON_RECEIPT = frozenset({P.ELECTION, P.ANSWER, P.COORDINATOR, P.TIME_QUERY,
                               P.TIME_REPLY, P.TIME_ADJUST})
"""Bus messages whose receipt gets a log line here (the others log in their handler;
BEAT, every heartbeat, only when it changes something)."""

HWM = 200_000
DRAIN = 1000
"""Messages read from one socket per loop turn: batches fsyncs and ACKs under load."""
TICK_EVERY = 0.002
"""Seconds between runs of the periodic jobs (``tick``): under load a turn takes well
under a millisecond, and no job needs a finer clock (the finest, a Berkeley probe
gap, is 20 ms)."""


class Server:
    def __init__(self, config: Config, server_id: int, clock: PhysicalClock | None = None) -> None:
        self.id = server_id
        self.name = f"server-{server_id}"
        self.config = config
        self.lamport = LamportClock()
        self.clock = clock or PhysicalClock()
        self.log = ProcessLog(self.name, config.log_path(self.name), self.lamport, self.clock)
        self.state = SocialState()
        # servers hold the same events: their folds would all come at once
        self.store = EventStore(config.server_data_dir(server_id), config.fsync,
                                config.checkpoint_min, config.checkpoint_ratio,
                                stagger=1 + 0.25 * ((server_id - 1) % 4))
        self.peers = Peers(server_id, config.peer_timeout)
        self.repl = Replication(server_id, self.state, self.store, self.peers, config.replicas)
        self.listeners = Listeners()
        self.desk = ClientDesk(self, ClientRequests(self.state), self.listeners)
        self.outbox: list[dict] = []             # events made this loop turn, to publish
        self.election = Bully(server_id, config, self.publish, self.log)
        self.berkeley = BerkeleySync(server_id, config, self.clock, self.publish, self.log,
                                     self.election)
        self.bus_handlers = {
            P.EVENT: self.on_event, P.BEAT: self.on_beat, P.BYE: self.on_bye,
            P.ELECTION: self.election.on_election, P.ANSWER: self.election.on_answer,
            P.COORDINATOR: self.election.on_coordinator,
            P.TIME_QUERY: self.berkeley.on_time_query, P.TIME_REPLY: self.berkeley.on_time_reply,
            P.TIME_ADJUST: self.berkeley.on_time_adjust}
        self.links = PeerLinks(self)
        self.phase = JOINING
        self.running = True
        self.started = time.monotonic()
        self.beat_sent_at = self.started         # when peers and broker last heard me
        self.leave_requested = False
        self.clock_jumps = 0
        self.phase_since = self.started
        self.target: dict[int, int] = {}
        self.last_write = self.started
        self.heartbeat_at = 0.0
        self.broker_seen = self.started
        self.broker_blocked = False
        self.bus_seen = self.started
        self.bus_down = False
        self.leave_deadline = 0.0
        self.rng = random.Random()
        self.gc = GcPacer()
        self.tick_at = 0.0                       # when the periodic jobs run next
        self.lag = ReplicationLag(server_id)
        self.ctx = zmq.Context()
        self.ctx.linger = 0
        self.poller = zmq.Poller()
        self._handlers: dict[zmq.Socket, object] = {}

    # --- sockets ------------------------------------------------------------------------
    def socket(self, kind: int, handler=None) -> zmq.Socket:
        """A socket of this server's loop; with a handler, polled and drained by it."""
        sock = self.ctx.socket(kind)
        sock.sndhwm = HWM
        sock.rcvhwm = HWM
        if handler is not None:
            self.poller.register(sock, zmq.POLLIN)
            self._handlers[sock] = handler
        return sock

    def close_socket(self, sock: zmq.Socket) -> None:
        if sock in self._handlers:
            self.poller.unregister(sock)
            del self._handlers[sock]
        sock.close(0)

    def open_sockets(self) -> None:
        cfg = self.config
        self.links.open()
        self.pub = self.socket(zmq.PUB)
        self.pub.connect(cfg.endpoint(cfg.bus_in_port))
        self.sub = self.socket(zmq.SUB, self.on_bus)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(cfg.endpoint(cfg.bus_out_port))
        self.connect_broker()

    def connect_broker(self) -> None:
        """(Re)connect to the broker, as the Paranoid Pirate worker does."""
        if getattr(self, "broker", None) is not None:
            self.close_socket(self.broker)
        self.broker = self.socket(zmq.DEALER, self.on_broker)
        self.broker.setsockopt(zmq.IDENTITY, self.name.encode())
        self.broker.connect(self.config.endpoint(self.config.backend_port))
        self.broker_seen = time.monotonic()

    # --- sending --------------------------------------------------------------------------
    def publish(self, msg_type: str, body: dict) -> None:
        """Send on the bus; every bus send but the periodic BEAT gets a log line."""
        stamp = self.lamport.tick()
        P.send(self.pub, P.encode(msg_type, stamp, body))
        if msg_type == P.EVENT:
            last = len(body["events"]) - 1
            for i, event in enumerate(body["events"]):
                vv = f" vv={body['vv']}" if i == last else ""
                self.log.send("bus", f"EVENT {event_brief(event)}{vv}")
        elif msg_type != P.BEAT:
            self.log.send("bus", f"{msg_type} {brief(body)}")

    def to_broker(self, route: bytes, msg_type: str, body: dict) -> None:
        stamp = self.lamport.tick()
        try:
            P.send(self.broker, [route] + P.encode(msg_type, stamp, body), zmq.NOBLOCK)
            self.broker_blocked = False
        except zmq.Again:                        # broker down or far behind: say so once
            if not self.broker_blocked:
                self.log.warn(f"cannot send to the broker (down?): dropped {msg_type}")
            self.broker_blocked = True

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        events = self.store.load()
        loaded = self.repl.load(events)
        # Lamport rule on restart: never stamp below what we already hold
        self.lamport.merge(max((e["lamport"] for e in events), default=0))
        self.open_sockets()
        self.gc.settle()
        self.log.note(f"started: {loaded} events reloaded from {self.store.folder}, "
                      f"digest {self.state.digest()[:12]}; joining")
        try:
            while self.running:
                now = time.monotonic()
                wake = max(min(self.next_deadline(), now + 0.25), self.tick_at)
                ready = self.poller.poll(max(0.0, wake - now) * 1000)
                self.check_frozen()
                for sock, _ in ready:
                    handler = self._handlers.get(sock)
                    if handler is not None:
                        self._drain(sock, handler)
                self.after_batch()
                now = time.monotonic()
                if now >= self.tick_at:
                    self.tick_at = now + TICK_EVERY
                    self.tick(now)
                self.log.flush_if_due()
        finally:
            self.close()

    def _drain(self, sock: zmq.Socket, handler) -> None:
        for _ in range(DRAIN):
            try:
                if not P.readable(sock):
                    return
                frames = P.recv(sock, zmq.NOBLOCK)
            except zmq.ZMQError:        # socket closed by a handler in this turn
                return
            self.check_frozen()                  # a SIGSTOP may land mid-burst
            try:
                handler(frames)
            except Exception as exc:    # noqa: BLE001 - no input may crash the server
                self.log.warn(f"error handling a message: {type(exc).__name__}: {exc}")

    def next_deadline(self) -> float:
        deadlines = [self.heartbeat_at, self.election.next_deadline(),
                     self.berkeley.next_deadline(), self.listeners.next_deadline(),
                     self.log.flush_if_due()]
        return min(d for d in deadlines if d is not None)

    def after_batch(self) -> None:
        """Once per loop turn: make new events durable, ACK them, answer waiting clients."""
        fresh = self.repl.take_fresh()
        if fresh:
            self.store.sync()                    # durable before anyone hears of it
            self.last_write = time.monotonic()
        if self.outbox:
            # this turn's new writes, one bus message, and my vector with them: it
            # acknowledges every peer event applied this turn (the ACK rides along)
            self.publish(P.EVENT, {"from": self.id, "events": self.outbox,
                                   "vv": self.state.vv()})
            self.outbox = []
        elif fresh and self.phase != JOINING:
            # only peers' events: an ACK straight to each origin says I hold them
            # (no other server counts copies of them, so not on the bus)
            origins = {e["origin"] for e in fresh} - {self.id}
            if origins:
                self.links.ack(origins, self.state.vv())
        if any(e["kind"] in (P.EV_POST, P.EV_DM) for e in fresh):
            self.desk.wake_listeners()
        self.desk.answer_acked()
        self.lag.update(self.state, self.peers, time.monotonic())

    def tick(self, now: float) -> None:
        """Idempotent periodic jobs, run at most every TICK_EVERY."""
        self.check_frozen()                      # before a heartbeat says "serving"
        if self.leave_requested:
            self.leave()
        if self.clock.jumps != self.clock_jumps:  # --clock-chaos moved the clock
            self.clock_jumps = self.clock.jumps
            self.log.note(f"clock chaos: clock jumped by {self.clock.last_jump * 1000:+.1f} ms")
        self.desk.expire_listeners(now)
        self.election.tick(now)
        self.berkeley.tick(now)
        if now >= self.heartbeat_at:
            self.heartbeat_at = now + self.config.heartbeat_interval
            self.send_heartbeats(now)
            self.purge_peers(now)
        self.advance_phase(now)
        for peer_id, origins in self.repl.fetches_due(now, eager=self.phase == SYNCING).items():
            self.links.fetch(peer_id, origins)
        self.store.maybe_checkpoint(now - self.last_write, self.config.checkpoint_idle_s)
        for folded, seconds in self.store.finished():
            self.log.note(f"checkpoint: {folded} events folded into TinyDB "
                          f"({self.store.stored} stored) in {seconds * 1000:.0f} ms")
        if self.store.lost:
            self.log.warn(self.store.lost)
            self.store.lost = None
        self.gc.tick(now)

    def advance_phase(self, now: float) -> None:
        if self.phase == JOINING and now - self.phase_since >= 3 * self.config.heartbeat_interval:
            self.target = self.repl.sync_target(now)
            self.set_phase(SYNCING, f"target {self.target}")
            self.election.start(now)
        elif self.phase == SYNCING:
            self.repl.lower_unreachable(self.target, now)
            clock_set = (self.berkeley.synced      # a coordinator is synced by its own round
                         or now - self.phase_since >= self.config.join_clock_wait)
            if self.repl.caught_up(self.target) and clock_set:
                self.set_phase(SERVING, f"caught up: {self.state.count} events, "
                                        f"digest {self.state.digest()[:12]}")
                self.to_broker(b"", P.READY, {"id": self.id})
        elif self.phase == LEAVING and (not self.repl.waiters or now >= self.leave_deadline):
            self.running = False

    def check_frozen(self) -> None:
        """After SIGSTOP/SIGCONT (or any stall) long enough that peers or the broker
        may have counted us gone, our state may be stale and the cluster has moved
        on: leave the pool and catch up again before answering anyone, as a joining
        server does. Measured from our last heartbeat, which is what they judge by."""
        silent = time.monotonic() - self.beat_sent_at
        patience = min(self.config.peer_timeout, self.config.server_timeout)
        if silent < patience - self.config.heartbeat_interval or \
                self.phase in (JOINING, LEAVING):
            return
        self.log.warn(f"stalled for {silent:.1f}s without a heartbeat (frozen?): "
                      f"catching up before serving again")
        self.set_phase(JOINING, "resumed after a stall")
        self.desk.wake_listeners()               # answered "unavailable": listen elsewhere
        self.to_broker(b"", P.HEARTBEAT, {"id": self.id, "phase": self.phase})
        self.beat_sent_at = time.monotonic()

    def set_phase(self, phase: str, why: str) -> None:
        self.log.note(f"phase {self.phase} -> {phase}: {why}")
        self.phase = phase
        self.phase_since = time.monotonic()
        if phase == SYNCING:
            self.berkeley.request_round()

    def request_leave(self, *_args) -> None:
        """The SIGTERM handler: only a flag, so no socket is used inside a signal handler."""
        self.leave_requested = True

    def leave(self) -> None:
        """Out of the pool at once, finish what is waiting, exit within 2 s."""
        self.leave_requested = False
        if self.phase == LEAVING:
            return
        self.set_phase(LEAVING, "SIGTERM")
        self.leave_deadline = time.monotonic() + 1.0
        self.to_broker(b"", P.LEAVE, {"id": self.id})
        self.desk.wake_listeners()               # "unavailable": they listen elsewhere at once
        self.election.leave()
        self.publish(P.BYE, {"from": self.id})

    def close(self) -> None:
        self.store.close()
        self.log.note(f"stopped: {self.state.count} events, digest {self.state.digest()[:12]}")
        self.ctx.destroy(0)
        self.log.close()

    # --- heartbeats and membership ----------------------------------------------------------
    def status(self, now: float) -> dict:
        return {"id": self.id, "phase": self.phase, "events": self.state.count,
                "digest": self.state.digest(), "lamport": self.lamport.value,
                "vv": {str(k): v for k, v in self.state.vv().items()},
                "coordinator": self.election.coordinator, "epoch": self.election.epoch,
                "clock_offset_ms": self.berkeley.offset_ms,
                "clock_skew_ms": round(self.clock.skew() * 1000, 3),
                "last_sync": self.berkeley.last_sync,
                "under_replicated": self.repl.under_replicated(now),
                "repl_lag_hist": self.lag.hist.counts,
                "peers": sorted(p.id for p in self.peers.live(now))}

    def send_heartbeats(self, now: float) -> None:
        self.beat_sent_at = now
        status = self.status(now)
        self.to_broker(b"", P.HEARTBEAT, {**status, "clock": self.clock.now()})
        beat = {"from": self.id, "phase": self.phase, "vv": status["vv"],
                "epoch": self.election.epoch, "coordinator": self.election.coordinator,
                "events": status["events"], "digest": status["digest"]}
        self.publish(P.BEAT, beat)
        if now - self.broker_seen > self.config.broker_timeout:
            self.log.warn(f"broker silent for {now - self.broker_seen:.1f}s: reconnecting")
            self.connect_broker()

    def purge_peers(self, now: float) -> None:
        """Peers silent for peer_timeout are gone, unless the bus itself is down
        (we do not hear our own BEATs either): then we know nothing about them,
        and counting them gone would let writes be acked with too few copies."""
        if now - self.bus_seen > self.config.peer_timeout / 2:
            if not self.bus_down:
                self.log.warn("bus silent (broker down?): holding peers' liveness")
            self.bus_down = True
            self.peers.hold(now)
            return
        if self.bus_down:
            self.log.note("bus back")
            self.bus_down = False
        for peer in self.peers.expire(now):
            self.log.note(f"peer server-{peer.id} gone (silent {self.config.peer_timeout}s)")
            self.links.drop(peer.id)

    # --- broker: client requests ---------------------------------------------------------------
    def on_broker(self, frames: list[bytes]) -> None:
        self.broker_seen = time.monotonic()
        if len(frames) != 4:
            self.log.warn(f"dropped malformed message from the broker ({len(frames)} frames)")
            return
        route = frames[0]
        try:
            msg = P.decode(frames[1:])
        except P.ProtocolError as exc:
            self.log.warn(f"dropped bad message from the broker: {exc}")
            return
        self.lamport.merge(msg.lamport)
        if msg.type == P.REQUEST and route:
            self.desk.on_request(route, msg.body)

    # --- bus ------------------------------------------------------------------------------------
    def on_bus(self, frames: list[bytes]) -> None:
        try:
            msg = P.decode(frames)
        except P.ProtocolError as exc:
            self.log.warn(f"dropped bad bus message: {exc}")
            return
        sender = msg.body.get("from")
        if sender == self.id:
            self.bus_seen = time.monotonic()       # my own echo: the bus works
            return
        if msg.type == P.PUSH:
            return
        if msg.type == P.EVENT and self.fault_drops():
            return
        self.lamport.merge(msg.lamport)
        now = time.monotonic()
        peer, new = self.peers.saw(sender, now)
        if new:
            self.log.recv(f"server-{sender}", f"peer appeared ({msg.type})")
            if self.election.is_coordinator:
                self.berkeley.request_round()
        self.election.saw_peer(sender, now)
        if msg.type in LOGGED_ON_RECEIPT and msg.body.get("to", self.id) == self.id:
            self.log.recv(f"server-{sender}", f"{msg.type} {brief(msg.body)}")
        handler = self.bus_handlers.get(msg.type)
        if handler is not None:
            handler(msg.body, now)

    def on_event(self, body: dict, now: float) -> None:
        events = [P.check_event(e) for e in body["events"]]
        vv = P.parse_vv(body["vv"])              # all checked before anything is applied
        last = len(events) - 1
        for i, event in enumerate(events):
            new = self.repl.receive(event)
            held = "" if new else " (held or early)"
            tail = f" vv={body['vv']}" if i == last else ""    # the ACK riding along
            self.log.recv(f"server-{body['from']}", f"EVENT {event_brief(event)}{held}{tail}")
        self.peers.update_vv(body["from"], vv)

    def on_ack(self, body: dict, now: float) -> None:
        """A peer's version vector, sent straight to me (``PeerLinks``) as the origin."""
        if self.fault_drops():
            return
        self.peers.update_vv(body["from"], P.parse_vv(body["vv"]))
        self.log.recv(f"server-{body['from']}", f"ACK vv={body['vv']}")

    def fault_drops(self) -> bool:
        """Test-only fault (``--drop-rate``): lose this replication message."""
        return bool(self.config.drop_rate) and self.rng.random() < self.config.drop_rate

    def on_beat(self, body: dict, now: float) -> None:
        peer = self.peers.table[body["from"]]
        if peer.phase != body["phase"]:
            self.log.recv(f"server-{peer.id}", f"phase {peer.phase} -> {body['phase']}")
            peer.phase = body["phase"]
        vv = P.parse_vv(body["vv"])
        if body["phase"] == JOINING:               # (re)starting: it may hold less than before
            self.peers.reset_vv(peer.id, vv)
        else:                                      # an ACK may have overtaken this BEAT
            self.peers.update_vv(peer.id, vv)
        self.election.on_beat(peer.id, body["epoch"], body["coordinator"], now)

    def on_bye(self, body: dict, now: float) -> None:
        self.peers.left(body["from"])
        self.log.recv(f"server-{body['from']}", "BYE: peer leaves")
        self.election.peer_left(body["from"], now)
