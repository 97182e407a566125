"""A server's side of the bus: its PUB and SUB through the broker's XSUB/XPUB proxy.

Every server publishes EVENT, BEAT, BYE, election and clock messages on the bus and
hears every other server's. Sending (``publish``) gets a log line for every message
but the periodic BEAT. Receiving (``on_bus``): my own echo only says the bus works;
anyone else's message says that peer is alive (``Membership.saw_peer``, the bully's
``saw_peer``, and a new peer asks the coordinator for a clock round), gets a line
if it is an election or clock message for me (``LOGGED_ON_RECEIPT``; the others log
in their handler), and goes to the handlers of its type (the server gives them,
``listen``). Both sockets are CURVE clients of the broker; ``connect`` opens them
again (ZeroMQ never retries a refused CURVE handshake, only a new socket does), and
a halted server closes its SUB (``deafen``): what it holds in memory beyond its disk
must reach no one.

It holds no reference to the server: it is given a socket factory, the Lamport clock
(through ``protocol.Endpoint``), the process's CURVE setup, the roles that hear of a
peer, and the handlers by message type.
"""
from __future__ import annotations

import time
from typing import Callable

import zmq

from common import protocol as P
from common.config import Config
from common.log import ProcessLog, brief, event_brief

LOGGED_ON_RECEIPT = frozenset({P.ELECTION, P.ANSWER, P.COORDINATOR, P.TIME_QUERY,
                               P.TIME_REPLY, P.TIME_ADJUST})
"""Bus messages whose receipt gets a log line here (the others log in their handler;
BEAT, every heartbeat, only when it changes something)."""


class Bus:
    """One server's PUB and SUB on the bus, and the dispatch of what it hears."""

    def __init__(self, server_id: int, config: Config, lamport, log: ProcessLog,
                 socket: Callable, close_socket: Callable, secure: Callable) -> None:
        self.id = server_id
        self.config = config
        self.lamport = lamport
        self.log = log
        self.socket = socket
        self.close_socket = close_socket
        self.secure = secure                     # the process's keys.Security, once made
        self.pub: P.Endpoint | None = None
        self.sub: P.Endpoint | None = None
        self.handlers: dict[str, tuple] = {}
        self.membership = self.election = self.berkeley = self.drops = None

    def listen(self, handlers: dict[str, tuple], membership, election, berkeley,
               drops: Callable[[], bool]) -> None:
        """What hears the bus: the roles are made after the bus they publish on."""
        self.handlers = handlers
        self.membership = membership
        self.election = election
        self.berkeley = berkeley
        self.drops = drops                       # test-only fault: lose this EVENT

    def connect(self) -> None:
        """(Re)open my PUB and SUB on the bus (CURVE clients of the broker)."""
        cfg = self.config
        security = self.secure()
        if self.pub is not None:
            self.close_socket(self.pub.sock)
            self.close_socket(self.sub.sock)
        self.pub = P.Endpoint(security.client(self.socket(zmq.PUB)), P.BUS, self.lamport)
        self.pub.sock.connect(cfg.endpoint(cfg.bus_in_port))
        sub = security.client(self.socket(zmq.SUB, self.on_bus))
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(cfg.endpoint(cfg.bus_out_port))
        self.sub = P.Endpoint(sub, P.BUS, self.lamport)

    def deafen(self) -> None:
        """Halted: hear no more of the bus (until the process starts afresh)."""
        self.close_socket(self.sub.sock)

    def publish(self, msg) -> None:
        """Send on the bus; every bus send but the periodic BEAT gets a log line."""
        self.pub.send(msg)
        if isinstance(msg, P.EventBatch):
            self.log.batch("send", "bus", [f"EVENT {event_brief(e)}" for e in msg.events])
        elif not isinstance(msg, P.Beat):
            self.log.send("bus", f"{msg.TYPE} {brief(msg)}")

    def on_bus(self, frames: list[bytes]) -> None:
        if P.sent_by(frames, self.id):
            self.membership.heard_bus(time.monotonic())   # my own echo: the bus works
            return
        try:
            incoming = self.sub.receive(frames)
        except P.ProtocolError as exc:
            self.log.warn(f"dropped a bad bus message: {exc}")
            return
        msg, now = incoming.msg, time.monotonic()
        if msg.sender == self.id:
            self.membership.heard_bus(now)       # my own echo: the bus works
            return
        if isinstance(msg, P.EventBatch) and self.drops():
            return
        if self.membership.saw_peer(msg.sender, now) and self.election.is_coordinator:
            self.berkeley.request_round()
        self.election.saw_peer(msg.sender, now)
        if msg.TYPE in LOGGED_ON_RECEIPT and getattr(msg, "to", self.id) == self.id:
            self.log.recv(f"server-{msg.sender}", f"{msg.TYPE} {brief(msg)}")
        for handler in self.handlers[msg.TYPE]:
            handler(msg, now)
