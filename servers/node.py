"""One server process: its sockets, its event loop, and the dispatch to its roles.

Sockets (all owned by the one loop in ``run``):

* ``broker``  DEALER -> broker backend: client requests in, replies out,
  READY / HB / LEAVE (the Paranoid Pirate worker).
* ``fast``    DEALER -> the broker's fast path (``broker/fast_path.py``), open only
  while serving: ``FAST_OPS`` requests in, their replies out on the same socket.
* ``pub``     PUB -> bus: EVENT, BEAT, BYE, election and clock messages.
* ``sub``     SUB <- bus: the same from every other server.
* peer links  (``peer_links.py``) ROUTER on ``peer_port(id)`` for FETCH and ACK,
  and one DEALER per peer it pulls from or acknowledges to.

The roles, each owning its state, timers and ``on_<TYPE>`` handlers:
``Membership`` (phases, heartbeats, stall check), ``Replication`` (apply,
outbox, quorum), ``CatchUp`` (what to pull from whom), ``Repair``
(anti-entropy: which copy of a differing event stands), ``ClientDesk``
(requests in, replies out), ``Bully`` (election), ``BerkeleySync`` (clocks)
and ``DiskWatch`` (a folder that takes no more writes).
This module only wires them: it decodes each message (``protocol.Endpoint``:
Lamport merge on receive, tick on send), hands it to the handlers of its type,
and runs the periodic jobs. Every handler and job runs under one guard: an
exception is logged with the message that caused it, and the server keeps serving.

A ``DiskError`` (the folder is full or read-only) is not such an exception: the
server halts (``halt``; ``disk_watch.py`` says why and what follows), and
``run`` returns ``RESTART`` once the folder can be written again, for
``servers/__main__.py`` to start the process afresh.

Where: this module holds the roles' wiring and the loop (``turn``, ``_drain``,
``after_batch``, ``tick``, ``halt``); the DEALER to the broker and what comes on it
are ``servers/broker_link.py`` (``BrokerLink``), the PUB and SUB and the bus's dispatch
``servers/bus.py`` (``Bus``), the fast path's socket, its requests and this turn's
replies ``servers/fast_link.py`` (``FastLink``, ``FastRoute``); the context, poller and
CURVE setup ``servers/socket_registry.py`` (``SocketRegistry``), the folder and the
files beside it at start-up, after folds and at the end ``servers/holdings.py``
(``Holdings``), FETCH, EVENTS and ACK ``servers/pulls.py`` (``Pulls``), the status row
``servers/status_row.py`` (``StatusRow``, ``BatchSizes``, ``DURABILITY``).
"""
from __future__ import annotations

import random
import time

import zmq

from common import log_lines as LL
from common import protocol as P
from common import sockets
from common import startup
from common.clock import PhysicalClock
from common.config import Config
from common.gc_pacer import GcPacer
from common.log import ProcessLog, event_brief
from servers.accounts import Accounts
from servers.berkeley import BerkeleySync
from servers.broker_link import BrokerLink
from servers.bus import Bus
from servers.catchup import CatchUp
from servers.client_desk import ClientDesk
from servers.disk_watch import DiskWatch
from servers.election import Bully
from servers.fast_link import FastLink, FastRoute
from servers.holdings import Holdings
from servers.issued import IssuedSeq
from servers.lamport_file import DurableLamportClock, LamportFile
from servers.listeners import Listeners
from servers.members_file import MembersFile
from servers.membership import Membership
from servers.peer_links import PeerLinks
from servers.peers import HALTED, JOINING, LEAVING, SERVING, SYNCING, Peers
from servers.pulls import Pulls
from servers.quorum import Quorum
from servers.replication import Replication
from servers.repair import Repair
from servers.replication_lag import ReplicationLag
from servers.requests import ClientRequests
from servers.socket_registry import ALLOWLIST_EVERY, SocketRegistry  # noqa: F401 - here too
from servers.state import SocialState
from servers.status_row import DURABILITY, BatchSizes, StatusRow  # noqa: F401 - here too
from servers.store import DiskError, EventStore, probe_folder

STOPPED = "stopped"
"""``Server.run``'s outcome: told to stop (SIGTERM, SIGINT)."""
RESTART = "restart"
"""``Server.run``'s outcome: halted, its folder writable again: start afresh."""


class Server:
    def __init__(self, config: Config, server_id: int, clock: PhysicalClock | None = None) -> None:
        self.id = server_id
        self.name = f"server-{server_id}"
        self.config = config
        self.lamport = DurableLamportClock()
        self.clock = clock or PhysicalClock()
        # the member list and the Lamport ceiling first: a damaged one stops the server
        # before it touches anything
        self.members_file = MembersFile(config.members_path(server_id), config.fsync)
        members = self.members_file.read()
        self.lamport_file = LamportFile(config.lamport_path(server_id), config.fsync)
        self.lamport_file.read()
        # the data folder, then the log file, each locked before it is touched: a
        # second server on either stops here (ownership.InUse), having written nothing
        # (servers hold the same events: their folds would all come at once, so staggered)
        self.store = EventStore(config.server_data_dir(server_id), config.fsync,
                                config.checkpoint_min, config.checkpoint_ratio,
                                stagger=1 + 0.25 * ((server_id - 1) % 4),
                                quiet_s=config.checkpoint_quiet_s,
                                close_wait=config.checkpoint_close_wait,
                                retry_s=config.checkpoint_retry_s)
        try:
            self.log = ProcessLog(self.name, config.log_path(self.name), self.lamport,
                                  self.clock, flush_every=config.log_flush_every,
                                  exclusive=True)
        except OSError:
            self.store.close()
            raise
        self.state = SocialState()
        self.disk = DiskWatch(self.store.folder, self.log,
                              probe=lambda needed: probe_folder(self.store.folder, needed),
                              probe_every=config.disk_probe_every)
        self.issued = IssuedSeq(config.issued_path(server_id), config.fsync)
        self.files = Holdings(self.store, self.issued, self.members_file, self.lamport_file,
                              self.lamport, self.log)
        self.registry = SocketRegistry(config, self.log)   # every socket of the loop
        self.socket, self.close_socket = self.registry.socket, self.registry.close_socket
        self.bus = Bus(server_id, config, self.lamport, self.log, self.socket,
                       self.close_socket, secure=lambda: self.security)
        self.broker = BrokerLink(server_id, config, self.lamport, self.log, self.socket,
                                 self.close_socket, secure=lambda: self.security)
        self.publish = self.bus.publish          # the roles' sends: the links' own methods
        self.to_broker = self.broker.send
        now = time.monotonic()
        self.peers = Peers(server_id, config.peer_timeout, vouch=self.vouch)
        self.quorum = Quorum(server_id, config.peer_timeout, members=members,
                             save=self.files.save_members, log=self.log)
        self.catchup = CatchUp(self.state, self.peers, config.gap_grace, config.fetch_timeout)
        self.repl = Replication(server_id, self.state, self.store, self.peers, self.catchup,
                                config.replicas, self.log,
                                serving=lambda: self.membership.phase == SERVING,
                                on_conflict=self.on_conflict, majority=self.quorum.majority)
        self.repair = Repair(server_id, self.state, self.peers, self.log,
                             send=lambda peer_id, msg: self.links.ask(peer_id, msg),
                             replace=self.repl.replace, timeout=config.fetch_timeout,
                             cooldown=config.peer_timeout)
        self.lag = ReplicationLag(server_id)
        self.batches = BatchSizes()
        self.election = Bully(server_id, config, self.publish, self.log,
                              quorum=self.quorum.has_majority,
                              higher_heard=self.higher_heard)
        self.berkeley = BerkeleySync(server_id, config, self.clock, self.publish, self.log,
                                     self.election)
        self.row = StatusRow(server_id, config.fsync, self.state, self.lamport, self.clock,
                             self.repl, self.lag, self.peers, self.quorum, self.election,
                             self.berkeley, self.repair, self.batches)
        self.pulls = Pulls(server_id, config.fetch_batch, self.state, self.repl, self.catchup,
                           self.log, drops=self.fault_drops)
        self.membership = Membership(
            server_id, config, self.peers, self.catchup, self.log, now=now,
            publish=self.publish, to_broker=self.to_broker, status=self.row.status,
            wall_clock=self.clock.now, clock_synced=lambda: self.berkeley.synced,
            idle=lambda: not self.repl.waiters, on_phase=self.on_phase,
            on_peer_gone=self.on_peer_gone, reconnect_broker=self.broker.connect,
            must_hold={server_id: self.issued.highest}, on_repaired=self.files.repaired,
            quorum=self.quorum, members_path=str(self.members_file.path))
        self.desk = ClientDesk(server_id, ClientRequests(self.state), self.repl, Listeners(),
                               self.lag, self.lamport, self.clock, self.log,
                               replicas=config.replicas, reply=self.reply,
                               unavailable=self.unavailable,
                               accounts=Accounts.from_config(self.state, config),
                               short_of_majority=self.quorum.short_of_majority,
                               write_wait=config.write_wait)
        self.links = PeerLinks(server_id, config, self.lamport, self.log, self.socket,
                               self.close_socket, secure=lambda: self.security,
                               on_ack=self.pulls.on_ACK,
                               answers={P.Fetch: self.pulls.answer_FETCH,
                                        P.Compare: self.repair.answer_COMPARE,
                                        P.CopyRange: self.repair.answer_RANGE},
                               replies={P.Events: self.pulls.on_EVENTS,
                                        P.Sums: lambda _peer, msg, now: self.repair.on_SUMS(msg, now),
                                        P.Copies: lambda _peer, msg, now: self.repair.on_COPIES(msg, now)})
        self.row.listen(self.membership, self.links)
        self.pulls.listen(self.links)
        self.bus.listen({
            P.EVENT: (self.repl.on_EVENT,),
            P.BEAT: (self.membership.on_BEAT, self.election.on_BEAT, self.repair.on_BEAT,
                     self.links.on_BEAT),
            P.BYE: (self.membership.on_BYE, self.election.on_BYE),
            P.ELECTION: (self.election.on_ELECTION,),
            P.ANSWER: (self.election.on_ANSWER,),
            P.COORDINATOR: (self.election.on_COORDINATOR,),
            P.TIME_QUERY: (self.berkeley.on_TIME_QUERY,),
            P.TIME_REPLY: (self.berkeley.on_TIME_REPLY,),
            P.TIME_ADJUST: (self.berkeley.on_TIME_ADJUST,)},
            self.membership, self.election, self.berkeley, drops=self.fault_drops)
        self.broker.listen(self.membership, self.berkeley, self.desk, self.disk, self.bus)
        self.last_write = now
        self.rng = random.Random()
        self.gc = GcPacer()
        self.tick_at = 0.0                       # when the periodic jobs run next
        # the loop reads these every turn: the registry's own, held here
        self.poller, self._handlers, self._named = (self.registry.poller,
                                                    self.registry.handlers, self.registry.named)
        self.registry.open()
        try:                 # my keys (made if missing), my admission, the ZAP handler
            self.security = self.registry.secure(config.data_dir, self.name, server_id)
        except BaseException:
            self.store.close()
            self.log.close()
            self.registry.destroy()
            raise
        if self.security.problem:
            self.log.warn(self.security.problem)
        self.fast = FastLink(server_id, config, self.lamport, self.clock, self.log, self.socket,
                             self.close_socket, self.security, take=self.desk.on_REQ)

    # --- sockets ------------------------------------------------------------------------
    def open_sockets(self) -> None:
        """The bus and the broker (the peer port is bound first, in ``start``)."""
        self.bus.connect()
        self.broker.connect()

    def reply(self, route: bytes, reply: P.Reply) -> None:
        if not isinstance(route, FastRoute):
            self.to_broker(reply, route)
            return
        self.fast.add(route, reply)              # sent at the turn's end, if still serving

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> str:
        """Serve until told to stop (``STOPPED``), or until a halted server's folder
        takes writes again (``RESTART``: the caller starts the process afresh)."""
        try:
            try:
                self.start()
            except Exception as exc:
                self.log.warn(f"cannot start: {startup.describe(exc)}")
                raise
            while self.membership.running and not self.disk.restart:
                self.turn()
        finally:
            self.close()
        restart = self.disk.restart and not self.membership.leave_requested   # SIGTERM meanwhile
        return RESTART if restart else STOPPED

    def start(self) -> None:
        """The port, the folder, the sockets: a problem with any stops the server here,
        and ``__main__`` says it in one line; a folder that takes no write (a full
        disk) halts it at once: it never serves on a disk that cannot hold."""
        # the port before the folder is loaded: one in use changes nothing in it
        self.links.open()
        events = self.files.load()           # what was wrong with the folder: said
        if self.store.needs_repair is not None:
            self.membership.folder_damaged(self.store.needs_repair)
        loaded = self.repl.load(events)
        failure = self.files.begin(self.state.seq_of(self.id), events, self.disk.check)
        self.open_sockets()
        self.gc.settle()
        self.log.note(LL.STARTED.format(events=loaded, folder=self.store.folder)
                      + f"digest {self.state.digest()[:12]}; {DURABILITY[self.row.durability]}; "
                      f"{'joining' if failure is None else 'halted'}")
        if failure is not None:
            self.halt(failure, time.monotonic(), at_start=True)

    def turn(self) -> None:
        """One turn of the loop: wait for messages or a deadline, handle what came,
        make it durable and announce it, run the periodic jobs when due."""
        now = time.monotonic()
        wake = max(min(self.next_deadline(), now + 0.25), self.tick_at)
        ready = self.poller.poll(sockets.poll_ms(wake - now))
        self.membership.check_frozen(time.monotonic())
        for sock, _ in ready:
            handler = self._handlers.get(sock)
            if handler is not None:
                self._drain(sock, handler)
        if not self.disk.halted:
            self.log.guard(self.after_batch)
        now = time.monotonic()
        if now >= self.tick_at:
            self.tick_at = now + self.config.tick_every
            self.log.guard(self.tick, now)
        fast = self.fast
        if fast.out:
            self.log.guard(fast.send_replies)
        if fast.closing:
            fast.close_now()
        self.log.flush_if_due()

    def _drain(self, sock: zmq.Socket, handler) -> None:
        """Read up to ``drain`` messages; the poll said the first one is there."""
        named = sock in self._named
        for _ in range(self.config.drain):
            try:                        # NOBLOCK: the end of the burst raises once
                if named:
                    frames, who = P.recv_from(sock, zmq.NOBLOCK)
                else:
                    frames = P.recv(sock, zmq.NOBLOCK)
            except zmq.ZMQError:        # nothing after all, or closed by a handler this turn
                return
            self.membership.check_frozen(time.monotonic())   # a SIGSTOP may land mid-burst
            if named:
                self.log.guard(handler, frames, who)
            else:
                self.log.guard(handler, frames)

    def next_deadline(self) -> float:
        if self.disk.halted:                     # only heartbeats and probes go on
            deadlines = [self.membership.next_deadline(), self.disk.next_deadline(),
                         self.log.flush_if_due()]
        else:
            deadlines = [self.membership.next_deadline(), self.election.next_deadline(),
                         self.berkeley.next_deadline(), self.desk.listeners.next_deadline(),
                         self.log.flush_if_due()]
        return min(d for d in deadlines if d is not None)

    def after_batch(self) -> None:
        """Once per loop turn: make new events durable, announce or ACK them, answer
        waiting clients."""
        fresh, outbox = self.repl.take_turn()
        if not fresh and not self.repl.waiters and not self.lag.pending:
            return                               # a turn of heartbeats or reads: nothing to do
        now = time.monotonic()
        try:
            if fresh:
                self.store.sync()                # durable before anyone hears of it
                self.last_write = now
            if outbox:                           # never numbered again, even without the folder
                self.issued.record(outbox[-1].seq)
        except DiskError as exc:                 # not on disk: announced and acked to no one
            self.halt(exc, now)
            return
        if outbox:
            self.batches.count(len(outbox))
            # this turn's new writes, one bus message, and my vector with them: it
            # acknowledges every peer event applied this turn (the ACK rides along)
            self.publish(P.EventBatch(sender=self.id, events=outbox, vv=self.state.vv(),
                                      sums=self.state.sums()))
        elif fresh and self.membership.phase != JOINING:
            # only peers' events: an ACK straight to each origin says I hold them
            origins = {e.origin for e in fresh} - {self.id}
            if origins:
                self.links.ack(origins, self.state.vv(), self.state.sums())
        if fresh:
            concerned = self.state.concerned(fresh)
            if concerned:
                self.desk.wake(concerned, now)
        self.desk.answer_acked(now)
        self.lag.update(self.state, self.peers, now)

    def tick(self, now: float) -> None:
        """Idempotent periodic jobs, run at most every ``tick_every``; while halted,
        only the heartbeat to the broker and the probe of the folder."""
        self.membership.tick(now)
        self.registry.tick(now)                  # admitted keys, refused ones: said here
        if self.disk.halted:
            if self.membership.running:          # a SIGTERM stops it, not a restart
                self.disk.tick(now)
            self.gc.tick(now)
            return
        self.desk.expire_listeners(now)
        self.desk.expire_writes(now)
        self.election.tick(now)
        self.berkeley.tick(now)
        self.repair.tick(now)
        eager = self.membership.phase == SYNCING
        for peer_id, after in self.catchup.due(now, eager=eager).items():
            self.links.fetch(peer_id, after)
        try:
            self.files.checkpoint(now - self.last_write, self.config.checkpoint_idle_s)
        except DiskError as exc:                 # no new log segment: nothing more is held
            self.halt(exc, now)
            return
        self.gc.tick(now)

    def halt(self, failure: DiskError, now: float, at_start: bool = False) -> None:
        """My folder takes no more writes: this turn's events are announced and
        acknowledged to no one, waiting writers go elsewhere (``unavailable``), and I
        leave the pool and stop listening to the bus and my peers (what I hold in
        memory beyond my disk must reach no one) until I restart (``disk_watch.py``)."""
        if not self.disk.fail(failure, now, at_start):
            return
        self.repl.take_turn()                    # applied here, never on disk: dropped
        self.membership.halt(failure.kind, self.disk.waiting, now)
        self.desk.turn_away(self.unavailable() or f"{self.name} is halted")
        self.bus.deafen()
        self.links.close()

    # --- what the roles ask of the server --------------------------------------------------
    def unavailable(self) -> str | None:
        phase = self.membership.phase
        return None if phase == SERVING else f"{self.name} is {phase}"

    def on_phase(self, old: str, new: str, now: float) -> None:
        if new == SYNCING:
            self.election.start(now)
            self.berkeley.request_round()
        if new == SERVING:
            self.fast.open()
        if old == SERVING:
            self.fast.close()
            self.desk.wake_all(now)              # answered "unavailable": listen elsewhere
        if new in (LEAVING, HALTED):
            self.election.leave(new)

    def vouch(self, seq: int, fingerprint: int | None) -> bool:
        """Does a peer hold my events 1..seq, as its fingerprint of them claims? Yes
        if it is the fingerprint of the events I numbered; beyond what I hold, only
        while I am not serving: syncing back my own events (a lost folder), I learn
        from such claims who holds them; serving, I alone number them."""
        mine = self.state.sum_at(self.id, seq)
        if mine is None:
            return self.membership.phase != SERVING
        return fingerprint == mine

    def on_conflict(self, mine: P.Event, other: P.Event) -> None:
        self.log.warn(f"event {mine.origin}:{mine.seq} came again, another copy: "
                      f"{event_brief(other)}; mine: {event_brief(mine)}")
        self.repair.on_conflict(mine, other, time.monotonic())

    def higher_heard(self) -> float | None:
        """When a server above me (not gone by BYE, not joining) was last heard: the
        bully's rightful coordinator, maybe only slow on a lossy link."""
        return max((p.heard for p in self.peers.table.values()
                    if p.id > self.id and p.heard and p.phase != JOINING), default=None)

    def on_peer_gone(self, peer_id: int) -> None:
        self.links.drop(peer_id)

    def request_leave(self, *_args) -> None:
        """The SIGTERM handler: only a flag, so no socket is used inside a signal handler."""
        self.membership.request_leave()

    def close(self) -> None:
        self.files.close()
        if self.disk.halted:                     # memory may hold more than the folder
            self.log.note(f"stopped: halted, {self.store.folder} holds what the next start "
                          f"loads")
        else:
            self.log.note(f"stopped: {self.state.count} events, "
                          f"digest {self.state.digest()[:12]}")
        self.registry.close()
        self.log.close()

    def fault_drops(self) -> bool:
        """Test-only fault (``--drop-rate``): lose this replication message."""
        return bool(self.config.drop_rate) and self.rng.random() < self.config.drop_rate
