"""The broker's pool of servers: who is registered, who is alive, who may be picked.

Every server's DEALER registers under its identity (``server-N.<random>``) with its
first READY or HB; any traffic from it counts as proof of life (``touch``), and one
silent for ``server_timeout`` leaves the pool at the next round of heartbeats. Only
READY puts a server in the pool -- a server sends it once it has caught up -- never a
heartbeat, however "serving" it says it is: one cut off may have missed writes, and
its queued heartbeats arrive after the heal, before it has caught up. A LEAVE takes
it out at once. Each heartbeat the broker sends says whether the server is pooled,
so a current server that was dropped (or a broker that restarted) gets a fresh READY.

Picking: a pinned request goes to its server or to none; a request that marks what
a user has seen (``protocol.SEEN_OPS``) goes to the user's home server, the serving
one that ranks highest by rendezvous hashing; any other goes round-robin over the
servers in the pool. The servers' heartbeats also carry their status rows, which
``status`` shows, and their clocks, which the broker follows
(``broker/clock_follow.py``).

No sockets: heartbeats leave through the ``to_server`` callback the broker gives it.
"""
from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

import msgspec

from common import protocol as P
from common.config import Config
from common.log import ProcessLog

from broker.clock_follow import ClockFollower


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


class ServerPool:
    """The broker's server-pool role: the registry, liveness, READY/HB/LEAVE, picking."""

    def __init__(self, config: Config, log: ProcessLog, clock_follow: ClockFollower,
                 to_server: Callable[[P.Heartbeat, bytes], None]) -> None:
        self.config = config
        self.log = log
        self.clock_follow = clock_follow
        self._to_server = to_server              # a HB to one server's identity, NOBLOCK
        self.servers: dict[int, ServerEntry] = {}
        self._by_identity: dict[bytes, int] = {}
        self._rr = itertools.count()
        self.heartbeat_at = 0.0                  # monotonic: the next round of heartbeats

    def touch(self, identity: bytes) -> int | None:
        """Any message from a server is proof of life: its id, or None if unregistered."""
        entry_id = self._by_identity.get(identity)
        if entry_id is not None:
            self.servers[entry_id].expiry = time.monotonic() + self.config.server_timeout
        return entry_id

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

    def pick(self, pinned: int | None, now: float,
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

    def on_READY(self, identity: bytes, msg: P.Ready) -> None:
        entry = self._register(identity, msg.id)
        entry.left = False                       # only READY brings a leaver back
        entry.phase = "serving"
        entry.pooled = True
        where = f" (peers dial it at {msg.address})" if msg.address else ""
        self.log.recv(f"server-{entry.id}", f"READY: joins the pool{where}")

    def on_HB(self, identity: bytes, msg: P.Heartbeat) -> None:
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

    def on_LEAVE(self, identity: bytes, msg: P.Leave) -> None:
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
        if now < self.heartbeat_at:
            return
        self.heartbeat_at = now + self.config.heartbeat_interval
        for entry in self.servers.values():
            if entry.phase != "gone" and not entry.alive(now):
                self.forget(entry, f"silent for {self.config.server_timeout * 1000:.0f} ms")
            if entry.phase == "gone":
                continue
            hb = msgspec.structs.replace(self.clock_follow.heartbeat(time.monotonic()),
                                         pooled=entry.pooled)
            self._to_server(hb, entry.identity)

    def status(self) -> dict:
        """The servers' part of the broker's ``status`` answer: a row each, and the
        coordinator and epoch of the live server with the highest epoch."""
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
                "epoch": best.get("epoch") if best else None}


def _home_rank(user: str, server_id: int) -> int:
    """Rendezvous hashing: a user's home is the serving server that ranks highest."""
    digest = hashlib.blake2b(f"{user}/{server_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
