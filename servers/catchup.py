"""Point to point between servers: pulling missing events (FETCH -> EVENTS), and
acknowledging a peer's events to it (ACK).

Each server binds a ROUTER on ``peer_port(id)`` and answers FETCH with the
events it holds beyond the asker's version vector, ``fetch_batch`` at a time;
the asker keeps one DEALER per peer it pulls from and asks again while the
answer says ``more``. This is the snapshot-and-catch-up of the ZeroMQ Guide's
Clone pattern: a new server pulls from an empty vector, a returning one only
what it missed. The same DEALER carries ACKs to the origin of the events a
server applied: only the origin counts their copies, so they need no bus.
"""
from __future__ import annotations

import time

import zmq

from common import protocol as P
from servers.replication import FETCH_TIMEOUT


class PeerLinks:
    """The sockets a server talks to its peers through; owned by the server's loop."""

    def __init__(self, server) -> None:
        self.server = server
        self.dealers: dict[int, zmq.Socket] = {}
        self.router: zmq.Socket | None = None

    def open(self) -> None:
        cfg = self.server.config
        self.router = self.server.socket(zmq.ROUTER, self.on_request)
        self.router.bind(cfg.endpoint(cfg.peer_port(self.server.id)))

    def dealer(self, peer_id: int) -> zmq.Socket:
        sock = self.dealers.get(peer_id)
        if sock is None:
            sock = self.server.socket(zmq.DEALER, lambda frames, p=peer_id: self.on_reply(p, frames))
            cfg = self.server.config
            sock.connect(cfg.endpoint(cfg.peer_port(peer_id)))
            self.dealers[peer_id] = sock
        return sock

    def drop(self, peer_id: int) -> None:
        """A peer is gone: forget its socket (and whatever was queued on it)."""
        sock = self.dealers.pop(peer_id, None)
        if sock is not None:
            self.server.close_socket(sock)
        self.server.repl.fetching.pop(peer_id, None)

    def fetch(self, peer_id: int, origins: list[int]) -> None:
        """Ask ``peer_id`` for the events of ``origins`` I lack."""
        server = self.server
        stamp = server.lamport.tick()
        mine = server.state.vv()
        after = {origin: mine.get(origin, 0) for origin in origins}
        P.send(self.dealer(peer_id), P.encode(P.FETCH, stamp, {
            "from": server.id, "after": after, "limit": server.config.fetch_batch}))
        server.log.send(f"server-{peer_id}", f"FETCH after {after}")

    def ack(self, origins: set[int], vv: dict[int, int]) -> None:
        """Tell each origin what I now hold (its events among them). An ACK that
        cannot be queued is dropped: the next ACK or BEAT says the same and more."""
        server = self.server
        for origin in sorted(origins):
            stamp = server.lamport.tick()
            try:
                P.send(self.dealer(origin), P.encode(P.ACK, stamp, {"from": server.id, "vv": vv}),
                       zmq.NOBLOCK)
            except zmq.Again:
                continue
            server.log.send(f"server-{origin}", f"ACK vv={vv}")

    def on_request(self, frames: list[bytes]) -> None:
        """A peer's FETCH (answer with what I hold beyond its version vector) or ACK."""
        server = self.server
        try:
            msg = P.decode(frames[1:])
            if msg.type == P.ACK:
                server.lamport.merge(msg.lamport)
                server.on_ack(msg.body, time.monotonic())
                return
            if msg.type != P.FETCH:
                raise P.ProtocolError(f"expected FETCH or ACK, got {msg.type}")
            after = P.parse_vv(msg.body["after"])
        except P.ProtocolError as exc:
            server.log.warn(f"dropped bad peer request: {exc}")
            return
        server.lamport.merge(msg.lamport)
        limit = max(1, min(msg.body["limit"], server.config.fetch_batch))
        events = server.state.events_after(after, limit + 1)
        more = len(events) > limit
        body = {"from": server.id, "events": events[:limit], "vv": server.state.vv(), "more": more}
        stamp = server.lamport.tick()
        P.send(self.router, [frames[0]] + P.encode(P.EVENTS, stamp, body))
        server.log.line("serve", f"server-{msg.body['from']}",
                        f"EVENTS {min(len(events), limit)} events more={more}")

    def on_reply(self, peer_id: int, frames: list[bytes]) -> None:
        """EVENTS from a peer: apply them; ask again while it has more."""
        server = self.server
        try:
            msg = P.decode(frames)
            if msg.type != P.EVENTS:
                raise P.ProtocolError(f"expected EVENTS, got {msg.type}")
            events = [P.check_event(e) for e in msg.body["events"]]
        except P.ProtocolError as exc:
            server.log.warn(f"dropped bad reply from server-{peer_id}: {exc}")
            return
        server.lamport.merge(msg.lamport)
        new = server.repl.fetched(peer_id, events)
        server.log.recv(f"server-{peer_id}", f"EVENTS {len(events)} events, {new} new, "
                        f"more={msg.body['more']}")
        if msg.body["more"]:
            server.repl.fetching[peer_id] = time.monotonic() + FETCH_TIMEOUT
            self.fetch(peer_id, sorted({e["origin"] for e in events}))
