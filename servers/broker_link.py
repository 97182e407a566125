"""A server's DEALER to the broker's backend: the Paranoid Pirate worker's side.

Users' routed requests come in on it, their replies and the server's READY, HB and
LEAVE go out (``send``, never blocking: a broker down or far behind gets one line,
not a stalled loop). A heartbeat from the broker (an empty route) carries its clock
stamp, echoed in my next HB (``BerkeleySync.echo``, the broker's round trip in
``broker/clock_follow.py``), and whether I am in its pool (``Membership``); a
request (a route) goes to the client desk. ``connect`` opens the socket again, as
the Paranoid Pirate worker does when the broker is silent, and the bus too while it
is silent: ZeroMQ never retries a connection whose CURVE handshake was refused (a
key not yet admitted), only a new socket does.

It holds no reference to the server: it is given a socket factory, the Lamport
clock (through ``protocol.Endpoint``), the process's CURVE setup and the roles it
hands messages to.
"""
from __future__ import annotations

import time
from typing import Callable

import zmq

from common import keys
from common import protocol as P
from common.config import Config
from common.log import ProcessLog


class BrokerLink:
    """One server's DEALER to the broker's backend."""

    def __init__(self, server_id: int, config: Config, lamport, log: ProcessLog,
                 socket: Callable, close_socket: Callable, secure: Callable) -> None:
        self.id = server_id
        self.config = config
        self.lamport = lamport
        self.log = log
        self.socket = socket
        self.close_socket = close_socket
        self.secure = secure                     # the process's keys.Security, once made
        self.endpoint: P.Endpoint | None = None
        self.blocked = False
        self.membership = self.berkeley = self.desk = self.disk = self.bus = None

    def listen(self, membership, berkeley, desk, disk, bus) -> None:
        """Who hears from the broker: the roles are made after the link they send on."""
        self.membership = membership
        self.berkeley = berkeley
        self.desk = desk
        self.disk = disk
        self.bus = bus

    def connect(self) -> None:
        """(Re)connect to the broker, as the Paranoid Pirate worker does; the bus too
        while it is silent: ZeroMQ never retries a connection whose CURVE handshake was
        refused (a key not yet admitted), only a new socket does."""
        if self.endpoint is not None:
            self.close_socket(self.endpoint.sock)
            if self.membership.bus_down and not self.disk.halted:   # halted: deaf on purpose
                self.bus.connect()
        sock = self.secure().client(self.socket(zmq.DEALER, self.on_broker))
        sock.setsockopt(zmq.IDENTITY, keys.dealer_identity(self.id))   # taken with my key only
        sock.connect(self.config.endpoint(self.config.backend_port))
        self.endpoint = P.Endpoint(sock, P.BROKER_TO_SERVER, self.lamport)

    def send(self, msg, route: bytes = b"") -> None:
        if isinstance(msg, P.Heartbeat):        # the broker's round trip (clock_follow.py)
            msg = self.berkeley.echo(msg, time.monotonic())
        try:
            self.endpoint.send(msg, route, flags=zmq.NOBLOCK)
            self.blocked = False
        except zmq.Again:                        # broker down or far behind: say so once
            if not self.blocked:
                self.log.warn(f"cannot send to the broker (down?): dropped {msg.TYPE}")
            self.blocked = True

    def on_broker(self, frames: list[bytes]) -> None:
        self.membership.heard_broker(time.monotonic())
        try:
            incoming = self.endpoint.receive(frames)
        except P.ProtocolError as exc:
            self.log.warn(f"dropped a bad message from the broker: {exc}")
            return
        route = incoming.envelope[0]
        if isinstance(incoming.msg, P.Heartbeat) and not route:
            now = time.monotonic()
            self.berkeley.on_HB(incoming.msg, now)        # its stamp, echoed in my next HB
            self.membership.on_broker_HB(incoming.msg, now)   # am I in its pool?
        elif isinstance(incoming.msg, P.Request) and route:
            self.desk.on_REQ(route, incoming.msg, time.monotonic())
        else:
            self.log.warn(f"dropped {incoming.type} from the broker: wrong route")
