"""Membership: this server's phase, its heartbeats, and what it knows of its peers' lives.

Phases: ``joining`` (listen to the bus for ``3 * heartbeat_interval`` to learn
the peers) -> ``syncing`` (pull what the peers hold, get the clock set) ->
``serving`` (in the broker's pool) -> ``leaving`` (SIGTERM: out of the pool,
finish what waits for copies, exit). From any phase, ``halted``: the server
cannot write its folder (``disk_watch.py``), so it leaves the pool as a clean
leave does (LEAVE, BYE: its peers stop counting it at once), says why in its
status row (``waiting``), sends nothing on the bus and keeps only its HB to the
broker, until it restarts itself.

* Every ``heartbeat_interval`` the server sends HB (with its status row) to the
  broker and BEAT (phase, vector, coordinator) on the bus, and counts peers
  silent for ``peer_timeout`` as gone -- unless the bus itself is silent (not
  even its own BEATs come back): then it knows nothing of them, and counting
  them gone would let writes be acked with too few copies.
* **Stall check**: after a pause long enough that the broker or the peers may
  have counted it gone (SIGSTOP, a stalled VM), its state may be stale and the
  cluster has moved on, so it leaves the pool and catches up again as a joining
  server does, before it answers anyone.
* A peer's BEAT updates its phase and vector, and tells the quorum role
  (``quorum.py``) that it is a member and whom it hears; a BYE marks it gone and no
  longer a member at once. A member silent for ``peer_timeout`` is gone for copy
  counting, but leaves the membership only when a majority agrees it is silent.
* **The bus falls silent** (not even my own BEATs come back) while serving: the
  others may go on acknowledging writes I never see, so I leave serving at once
  and catch up again, as after a stall -- before they could count me out and ack
  without me (``peer_timeout``), so no read of mine misses an acknowledged write.
* **The broker drops me** (it restarted, or did not hear me for ``server_timeout``):
  its heartbeat says I am not in its pool. Serving, and so current, I send READY
  again; only READY puts a server in the pool, never a heartbeat.
* **A damaged folder** (``folder_damaged``: db.json was not a TinyDB file, or
  missing, so events were lost and nobody can say which): syncing ends only once
  the server holds everything a *serving* peer held when it was picked -- one
  complete sync from a peer -- on top of the usual target (which covers only what
  the live peers hold, and nothing when none is live yet). Without a serving peer
  it waits, and says so (log and ``waiting``); once repaired it says so and calls
  ``on_repaired`` (the store removes its marker).

Pure logic apart from the callbacks it is given: no sockets, no clock reads;
``now`` is ``time.monotonic()``.
"""
from __future__ import annotations

from typing import Callable

from common import log_lines as LL
from common import protocol as P
from common.config import Config
from common.log import ProcessLog, vv_brief
from servers.catchup import CatchUp
from servers.peers import HALTED, JOINING, LEAVING, SERVING, SYNCING, Peers
from servers.quorum import Quorum

ACTIVE = (JOINING, SYNCING, SERVING)
"""The phases in which a server is a member (leaving and halted ones said BYE)."""


class Membership:
    def __init__(self, my_id: int, config: Config, peers: Peers, catchup: CatchUp,
                 log: ProcessLog | None, *, now: float,
                 publish: Callable[[object], None],
                 to_broker: Callable[[object], None],
                 status: Callable[[float], P.ServerStatus],
                 wall_clock: Callable[[], float],
                 clock_synced: Callable[[], bool],
                 idle: Callable[[], bool],
                 on_phase: Callable[[str, str, float], None],
                 on_peer_gone: Callable[[int], None],
                 reconnect_broker: Callable[[], None],
                 must_hold: dict[int, int] | None = None,
                 on_repaired: Callable[[], None] | None = None,
                 quorum: Quorum | None = None, members_path: str | None = None) -> None:
        self.my_id = my_id
        self.config = config
        self.peers = peers
        self.quorum = quorum or Quorum(my_id, config.peer_timeout)
        self.catchup = catchup
        self.log = log
        self._publish = publish
        self._to_broker = to_broker
        self._status = status
        self._wall_clock = wall_clock
        self._clock_synced = clock_synced
        self._idle = idle
        self._on_phase = on_phase
        self._on_peer_gone = on_peer_gone
        self._reconnect_broker = reconnect_broker
        self._on_repaired = on_repaired or (lambda: None)
        self.phase = JOINING
        self.phase_since = now
        self.target: dict[int, int] = {}
        self.must_hold = must_hold or {}
        """What I must hold before I serve whatever the peers say: my own issued events."""
        self.waiting: str | None = None          # why syncing cannot finish, for status
        self.damaged: str | None = None
        """What of my folder was damaged (``db.json``), until a peer gave back what it lost."""
        self.repair_from: tuple[int, dict[int, int]] | None = None   # the peer, what it held
        self.running = True
        self.leave_requested = False
        self.leave_deadline = 0.0
        self.beat_sent_at = now            # when peers and the broker last heard me
        self.heartbeat_at = 0.0
        self.broker_seen = now
        self.bus_seen = now
        self.bus_down = False
        self.bus_up_at: float | None = None
        """When my own echo first came back since the bus was last down (None: not yet)."""
        self.ready_sent_at: float | None = None
        self.short: str | None = None          # ``1 of 3 servers reachable``, last said
        self.members_path = members_path

    @property
    def serving(self) -> bool:
        return self.phase == SERVING

    # --- what the server's loop calls ---------------------------------------------
    def tick(self, now: float) -> None:
        """The periodic job: stall check, leave, heartbeats and purge, next phase."""
        self.check_frozen(now)                   # before a heartbeat says "serving"
        if self.leave_requested:
            self.leave(now)
        if now >= self.heartbeat_at:
            self.heartbeat_at = now + self.config.heartbeat_interval
            self.send_heartbeats(now)
            if self.phase != HALTED:            # deaf to the bus: it knows nothing of them
                self.purge_peers(now)
        self.advance(now)

    def next_deadline(self) -> float:
        return self.heartbeat_at

    def heard_bus(self, now: float) -> None:
        """My own message came back on the bus: the bus works."""
        self.bus_seen = now
        if self.bus_up_at is None:
            self.bus_up_at = now

    def heard_broker(self, now: float) -> None:
        self.broker_seen = now

    def saw_peer(self, sender: int, now: float) -> bool:
        """Any bus message from a peer proves it alive; True if it is new or back."""
        _peer, new = self.peers.saw(sender, now)
        self.quorum.heard_from(sender, now)
        if new and self.log is not None:
            self.log.recv(f"server-{sender}", "peer appeared")
        return new

    def folder_damaged(self, what: str) -> None:
        """My folder lost events no one can name (``what``: ``db.json``): I serve only
        after one complete sync from a serving peer."""
        self.damaged = what

    def request_leave(self) -> None:
        """SIGTERM: only a flag (the handler runs inside a signal handler)."""
        self.leave_requested = True

    # --- handlers ---------------------------------------------------------------------
    def on_BEAT(self, msg: P.Beat, now: float) -> None:
        peer = self.peers.table.get(msg.sender)
        if peer is None:
            return
        self.quorum.on_view(msg.sender, msg.phase in ACTIVE, msg.members, msg.hears, now)
        if peer.phase != msg.phase:
            if self.log is not None:
                self.log.recv(f"server-{peer.id}", f"phase {peer.phase} -> {msg.phase}")
            peer.phase = msg.phase
        if msg.phase == JOINING:                 # (re)starting: it may hold less than before
            self.peers.reset_vv(peer.id, msg.vv, msg.sums)
        else:                                    # an ACK may have overtaken this BEAT
            self.peers.update_vv(peer.id, msg.vv, msg.sums)

    def on_BYE(self, msg: P.Bye, now: float) -> None:
        self.peers.left(msg.sender)
        self.quorum.left(msg.sender)
        if self.log is not None:
            self.log.recv(f"server-{msg.sender}", "BYE: peer leaves")

    # --- phases -----------------------------------------------------------------------
    def advance(self, now: float) -> None:
        # a joiner listens for its peers' BEATs only once it hears the bus (its own
        # echo): one that cannot (the broker down, or its key not yet admitted) would
        # else take itself for the only server and serve what little it holds
        if self.phase == JOINING and self.bus_up_at is not None and \
                now - self.phase_since >= 3 * self.config.heartbeat_interval and \
                now - self.bus_up_at >= 2 * self.config.heartbeat_interval:
            self.target = self.catchup.target(now)
            self.quorum.learned()
            for origin, seq in self.must_hold.items():
                self.target[origin] = max(self.target.get(origin, 0), seq)
            self.set_phase(SYNCING, f"target {self.target}", now)
        elif self.phase == SYNCING:
            self.catchup.lower_unreachable(self.target, now, self.must_hold)
            self.note_waiting(now)
            clock_set = (self._clock_synced()
                         or now - self.phase_since >= self.config.join_clock_wait)
            whole = self.repaired(now)
            if whole and self.catchup.caught_up(self.target) and clock_set:
                status = self._status(now)
                self.set_phase(SERVING, LL.CAUGHT_UP.format(events=status.events,
                                                            digest=status.digest[:12])
                               + self.pulled(), now)
                self.send_ready(now)
        elif self.phase == LEAVING and (self._idle() or now >= self.leave_deadline):
            self.running = False

    def send_ready(self, now: float) -> None:
        self.ready_sent_at = now
        self._to_broker(P.Ready(id=self.my_id, address=self._status(now).address))

    def on_broker_HB(self, msg: P.Heartbeat, now: float) -> None:
        """The broker's heartbeat says whether I am in its pool. Serving, I hold all
        that is acknowledged (the bus never fell silent, or I would have left serving),
        so a broker that dropped me -- restarted, or it missed my heartbeats -- gets a
        fresh READY (not before a READY of mine had time to arrive)."""
        if msg.pooled is not False or self.phase != SERVING:
            return
        if self.ready_sent_at is not None and \
                now - self.ready_sent_at < 2 * self.config.heartbeat_interval:
            return
        if self.log is not None:
            self.log.recv("broker", "HB: I am not in its pool: READY again")
        self.send_ready(now)

    def repaired(self, now: float) -> bool:
        """Whether my folder is whole: never damaged, or I hold all that a serving peer
        held when I picked it (picked again if it is no longer serving)."""
        if self.damaged is None:
            return True
        if self.repair_from is None or \
                self.repair_from[0] not in {p.id for p in self.peers.serving(now)}:
            self.repair_from = self.catchup.serving_peer(now)
            if self.repair_from is None:
                return False
        peer_id, held = self.repair_from
        if not self.catchup.caught_up(held):
            return False
        if self.log is not None:
            self.log.note(f"repaired ({self.damaged}): I hold all that server-{peer_id} "
                          f"held when I began to sync from it, {vv_brief(held)}")
        self.damaged = self.repair_from = None
        self._on_repaired()
        return True

    def pulled(self) -> str:
        """``pulled 1,234 events: 1,000 from server-1, 234 from server-2``, since syncing began."""
        pulled = self.catchup.take_pulled()
        total = sum(pulled.values())
        if not total:
            return "nothing pulled"
        return f"pulled {total:,} events: " + ", ".join(
            f"{n:,} from server-{peer}" for peer, n in sorted(pulled.items()) if n)

    def note_waiting(self, now: float) -> None:
        """Say once (log and status) when I cannot finish syncing: my own events are
        missing and no live peer holds them (I would number new writes again), or my
        folder was damaged and no peer serves to sync from."""
        waiting = None
        for origin, seq in self.must_hold.items():
            held = self.catchup.held(origin)
            if held < seq and not self.catchup.reachable(origin, now):
                waiting = (f"my folder holds my events up to seq {held}, but I issued "
                           f"up to {seq}: waiting for a peer that holds them")
        if waiting is None and self.damaged is not None and not self.peers.serving(now):
            waiting = (f"my data folder was damaged ({self.damaged}): waiting for a peer to "
                       f"sync from")
        if waiting is not None and waiting != self.waiting and self.log is not None:
            self.log.warn(f"not serving: {waiting}")
        self.waiting = waiting

    def set_phase(self, phase: str, why: str, now: float) -> None:
        old = self.phase
        if self.log is not None:
            self.log.note(LL.PHASE.format(old=old, new=phase, why=why))
        self.phase = phase
        self.waiting = None
        self.phase_since = now
        if phase == JOINING:
            self.catchup.take_pulled()           # what this catch-up pulls, counted anew
        self._on_phase(old, phase, now)

    def check_frozen(self, now: float) -> None:
        """After a stall long enough that peers or the broker may have counted us
        gone, catch up again before serving. Measured from our last heartbeat,
        which is what they judge by."""
        silent = now - self.beat_sent_at
        patience = min(self.config.peer_timeout, self.config.server_timeout)
        if silent < patience - self.config.heartbeat_interval or \
                self.phase in (JOINING, LEAVING, HALTED):
            return
        if self.log is not None:
            self.log.warn(f"stalled for {silent * 1000:.0f} ms without a heartbeat (frozen?): "
                          f"catching up before serving again")
        self.set_phase(JOINING, "resumed after a stall", now)
        self._to_broker(P.Heartbeat(id=self.my_id, status=self._status(now)))
        self.beat_sent_at = now

    def halt(self, why: str, waiting: str, now: float) -> None:
        """I cannot write my folder: out of the pool at once, as a clean leave (LEAVE
        to the broker, BYE on the bus: peers stop counting my copies now, not after
        ``peer_timeout``), and ``waiting`` in my status row says why."""
        if self.phase == HALTED:
            return
        if self.phase == LEAVING:           # out of the pool already: stop waiting, exit
            self.running = False
            return
        self.set_phase(HALTED, why, now)
        self.waiting = waiting
        self._to_broker(P.Leave(id=self.my_id))
        self._publish(P.Bye(sender=self.my_id))

    def leave(self, now: float) -> None:
        """Out of the pool at once, finish what is waiting, exit within 2 s."""
        self.leave_requested = False
        if self.phase == LEAVING:
            return
        if self.phase == HALTED:            # out of the pool already, and nothing waits
            self.set_phase(LEAVING, "SIGTERM (halted: out of the pool already)", now)
            self.running = False
            return
        self.set_phase(LEAVING, "SIGTERM", now)
        self.leave_deadline = now + self.config.leave_deadline
        self._to_broker(P.Leave(id=self.my_id))
        self._publish(P.Bye(sender=self.my_id))

    # --- heartbeats and liveness ---------------------------------------------------------
    def send_heartbeats(self, now: float) -> None:
        """HB to the broker (my status row, and my clock: the broker follows the
        coordinator's), BEAT on the bus (not when halted: I hold nothing for anyone)."""
        self.beat_sent_at = now
        status = self._status(now)
        self._to_broker(P.Heartbeat(id=self.my_id, clock=self._wall_clock(), status=status))
        if self.phase != HALTED:
            self._publish(P.Beat(sender=self.my_id, phase=self.phase, vv=status.vv,
                                 epoch=status.epoch, coordinator=status.coordinator,
                                 events=status.events, digest=status.digest,
                                 sums=status.sums, address=status.address,
                                 members=sorted(self.quorum.members),
                                 hears=self.quorum.hears(now)))
        if now - self.broker_seen > self.config.broker_timeout:
            if self.log is not None:
                self.log.warn(f"broker silent for {(now - self.broker_seen) * 1000:.0f} ms: "
                              f"reconnecting")
            self._reconnect_broker()
            self.broker_seen = now

    def purge_peers(self, now: float) -> None:
        """Peers silent for peer_timeout are gone, unless the bus itself is down."""
        if now - self.bus_seen > self.config.peer_timeout / 2:
            if not self.bus_down and self.log is not None:
                self.log.warn(f"bus silent for {(now - self.bus_seen) * 1000:.0f} ms (broker "
                              f"down, or cut off?): holding peers' liveness")
            self.bus_down = True
            self.bus_up_at = None
            self.peers.hold(now)
            if self.phase == SERVING:
                # the others may be acknowledging writes I cannot see: no more reads here
                self.set_phase(JOINING, "the bus is silent: the others may acknowledge "
                                        "writes I never see; catching up before serving "
                                        "again", now)
                self._to_broker(P.Heartbeat(id=self.my_id, status=self._status(now)))
            return
        if self.bus_down and self.log is not None:
            self.log.note("bus back")
        self.bus_down = False
        for peer in self.peers.expire(now):
            if self.log is not None:
                self.log.note(f"peer server-{peer.id} gone "
                              f"(silent {self.config.peer_timeout * 1000:.0f} ms)")
            self.catchup.forget(peer.id)
            self._on_peer_gone(peer.id)
        self.quorum.sweep(now)
        self.note_reach(now)

    def note_reach(self, now: float) -> None:
        """Say once when I hear fewer than a majority of the members, and once when I
        hear a majority again."""
        short = self.quorum.short_of_majority(now)
        if (short is None) == (self.short is None) or self.log is None:
            self.short = short
            return
        if short is not None:
            heard = set(self.quorum.hears(now))
            silent = ", ".join(f"server-{m}" for m in sorted(self.quorum.members - heard))
            self.log.warn(f"I hear {short}: I acknowledge no write until a majority is back "
                          f"(silent: {silent}; if they are gone for good, stop me and "
                          f"remove {self.members_path or 'my members file'} to start anew)")
        else:
            self.log.note(f"a majority of the members is in reach again "
                          f"({self.quorum.reachable(now)} of {len(self.quorum.members)})")
        self.short = short
