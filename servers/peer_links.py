"""The sockets between servers: pulls (FETCH -> EVENTS), ACKs to an origin, and
the repair's questions (COMPARE -> SUMS, RANGE -> COPIES, ``repair.py``).

Each server binds its ROUTER on ``--bind`` and announces where its peers dial it
(``--advertise``, a ``PeerEndpoint``) in every BEAT: the DEALER for peer N
connects to the endpoint N announced, and is re-made when N announces another
(one log line). Until N has announced one (its first bus message may be an
EVENT, not a BEAT), the DEALER dials N's peer port on the broker's host
(``--host``), which is right on one machine: a message sent there across
machines reaches no one and is lost when the link is re-pointed, and each is
one that is said again anyway (an ACK by the next ACK or BEAT, a FETCH after
``fetch_timeout``). Dialling a wrong address is harmless: the CURVE handshake
checks the peer's key, so only server N can ever answer on N's link. The
fallback rather than waiting keeps a one-host cluster exactly as before, and a
joiner has heard every live peer's BEAT before it pulls (``membership.py``).

Each server binds a ROUTER on ``peer_port(id)`` and answers FETCH with the
events it holds beyond the asker's version vector; the asker keeps one DEALER
per peer and asks again while the answer says ``more``. This is the
snapshot-and-catch-up of the ZeroMQ Guide's Clone pattern: a new server pulls
from an empty vector, a returning one only what it missed. The same DEALER
carries ACKs to the origin of the events a server applied: only the origin
counts their copies, so they need no bus.

It holds no reference to the server: it is given a socket factory, the Lamport
clock (through ``protocol.Endpoint``), the process's CURVE setup and the handlers
to call. The ROUTER is ironhouse (only allowlisted keys connect) and takes a
question or an ACK from ``sender`` N only on a connection whose key is server N's;
each DEALER checks, in the CURVE handshake, that it talks to its peer's key.
"""
from __future__ import annotations

import time
from typing import Callable

import zmq

from common import protocol as P
from common import startup
from common.config import Config
from common.keys import Tally
from common.log import ProcessLog, vv_brief


class PeerLinks:
    def __init__(self, my_id: int, config: Config, lamport, log: ProcessLog,
                 open_socket: Callable[[int, Callable], zmq.Socket],
                 close_socket: Callable[[zmq.Socket], None], *, secure,
                 answers: dict[type, Callable[[object], object]],
                 on_ack: Callable[[P.Ack, float], None],
                 replies: dict[type, Callable[[int, object, float], None]]) -> None:
        self.my_id = my_id
        self.config = config
        self.lamport = lamport
        self.log = log
        self._open_socket = open_socket
        self._close_socket = close_socket
        self._secure = secure              # () -> the process's keys.Security
        self._impostors = Tally()
        self._keyless: set[int] = set()    # peers whose key I lack, said once
        self._answers = answers            # request type -> its answer
        self._on_ack = on_ack
        self._replies = replies            # answer type -> handler(peer_id, msg, now)
        self.router: P.Endpoint | None = None
        self.dealers: dict[int, P.Endpoint] = {}
        self.address = config.peer_endpoint(my_id)
        """The endpoint I announce (``--advertise``, else ``--bind``)."""
        self.announced: dict[int, str] = {}   # peer -> the endpoint it announced last
        self._dialled: dict[int, str] = {}    # peer -> the endpoint its DEALER connects to

    def open(self) -> None:
        sock = self._open_socket(zmq.ROUTER, self.on_router, named=True)
        sock.setsockopt(zmq.MAXMSGSIZE, P.MAX_PEER_REQUEST_BYTES)
        self._secure().serve(sock)
        startup.bind(sock, self.config.bind_endpoint(self.config.peer_port(self.my_id)))
        self.router = P.Endpoint(sock, P.PEER_REQUEST, self.lamport)

    def dealer(self, peer_id: int) -> P.Endpoint | None:
        """My link to ``peer_id``; None (said once) while its key is not in the allowlist."""
        link = self.dealers.get(peer_id)
        if link is None:
            security = self._secure()
            key = security.peer_key(peer_id)
            if key is None:
                if peer_id not in self._keyless:
                    self._keyless.add(peer_id)
                    self.log.warn(f"no key of server-{peer_id} in the allowlist: I cannot "
                                  f"reach it (python run_all.py admit {peer_id} KEY)")
                return None
            self._keyless.discard(peer_id)
            sock = self._open_socket(zmq.DEALER, lambda frames, p=peer_id: self.on_dealer(p, frames))
            security.client(sock, key)
            where = self.announced.get(peer_id) or self.config.fallback_peer_endpoint(peer_id)
            sock.connect(where)
            self._dialled[peer_id] = where
            link = self.dealers[peer_id] = P.Endpoint(sock, P.PEER_REPLY, self.lamport)
        return link

    def on_BEAT(self, msg: P.Beat, now: float) -> None:
        """A peer says where it is dialled: my link to it follows (re-made if it
        dials elsewhere; what was queued on the old one is said again anyway)."""
        if msg.address is None or self.announced.get(msg.sender) == msg.address:
            return
        old = self.announced.get(msg.sender)
        self.announced[msg.sender] = msg.address
        dialled = self._dialled.get(msg.sender)
        relink = msg.sender in self.dealers and dialled != msg.address
        if relink:
            self.drop(msg.sender)
        self.log.recv(f"server-{msg.sender}",
                      f"announces {msg.address}" + (f" (was {old})" if old else "")
                      + (f": re-dialling, not {dialled}" if relink else ""))

    def drop(self, peer_id: int) -> None:
        """A peer is gone: forget its socket (and whatever was queued on it)."""
        link = self.dealers.pop(peer_id, None)
        self._dialled.pop(peer_id, None)
        if link is not None:
            self._close_socket(link.sock)

    def close(self) -> None:
        """Every link closed (a halted server): no FETCH answered, no ACK sent or taken."""
        for peer_id in list(self.dealers):
            self.drop(peer_id)
        if self.router is not None:
            self._close_socket(self.router.sock)
            self.router = None

    # --- sending ----------------------------------------------------------------------
    def fetch(self, peer_id: int, after: dict[int, int]) -> None:
        """Ask ``peer_id`` for the events beyond ``after`` (origin -> seq I hold)."""
        link = self.dealer(peer_id)
        if link is None:
            return
        link.send(P.Fetch(sender=self.my_id, after=after,
                                          limit=self.config.fetch_batch))
        self.log.send(f"server-{peer_id}", f"FETCH after {vv_brief(after)}")

    def ask(self, peer_id: int, msg) -> None:
        """Send a question to a peer (dropped if its queue is full: the asker times out)."""
        link = self.dealer(peer_id)
        try:
            if link is None:
                return
            link.send(msg, flags=zmq.NOBLOCK)
        except zmq.Again:
            return
        self.log.send(f"server-{peer_id}", f"{msg.TYPE} {_brief(msg)}")

    def ack(self, origins, vv: dict[int, int], sums: dict[int, int]) -> None:
        """Tell each origin what I now hold (its events among them). An ACK that
        cannot be queued is dropped: the next ACK or BEAT says the same and more."""
        for origin in sorted(origins):
            link = self.dealer(origin)
            if link is None:
                continue
            try:
                link.send(P.Ack(sender=self.my_id, vv=vv, sums=sums), flags=zmq.NOBLOCK)
            except zmq.Again:
                continue
            self.log.send(f"server-{origin}", f"ACK vv={vv_brief(vv)}")

    # --- receiving ----------------------------------------------------------------------
    def on_router(self, frames: list[bytes], who: str) -> None:
        """A peer's ACK, or a question (FETCH, COMPARE, RANGE) to answer; ``who`` is the
        id the asking connection's key is registered under."""
        try:
            incoming = self.router.receive(frames)
        except P.ProtocolError as exc:
            self.log.warn(f"dropped a bad message on the peer port: {exc}")
            return
        msg, now = incoming.msg, time.monotonic()
        if who != f"server-{msg.sender}":
            self.refuse_impostor(who, msg)
            return
        if isinstance(msg, P.Ack):
            self._on_ack(msg, now)
            return
        answer = self._answers[type(msg)](msg)
        self.router.send(answer, *incoming.envelope)
        self.log.line("serve", f"server-{msg.sender}", f"{answer.TYPE} {_brief(answer)}")

    def refuse_impostor(self, who: str, msg) -> None:
        """A cluster key asking in another server's name: refused, said once per pair
        (and every thousandth time), nothing answered."""
        count = self._impostors.count((who, msg.sender, msg.TYPE))
        if count:
            self.log.warn(f"dropped {msg.TYPE} from server-{msg.sender}: its connection's key "
                          f"is {who or 'unknown'}'s ({count} so far)")

    def on_dealer(self, peer_id: int, frames: list[bytes]) -> None:
        """An answer (EVENTS, SUMS, COPIES) from a peer I asked."""
        link = self.dealers.get(peer_id)
        if link is None:
            return
        try:
            msg = link.receive(frames).msg
        except P.ProtocolError as exc:
            self.log.warn(f"dropped a bad reply from server-{peer_id}: {exc}")
            return
        if msg.sender != peer_id:
            self.log.warn(f"dropped {msg.TYPE} from server-{peer_id} claiming to be "
                          f"server-{msg.sender}")
            return
        self._replies[type(msg)](peer_id, msg, time.monotonic())


def _brief(msg) -> str:
    if isinstance(msg, P.Events):
        return f"{len(msg.events)} events more={msg.more}"
    if isinstance(msg, P.Sums):
        return f"server-{msg.origin} seqs {msg.lo + 1}..{msg.hi}: {len(msg.sums)} block sums"
    if isinstance(msg, P.Copies):
        return f"server-{msg.origin} seqs {msg.lo + 1}..{msg.hi}: {len(msg.events)} copies"
    if isinstance(msg, P.Compare):
        return f"server-{msg.origin} seqs {msg.lo + 1}..{msg.hi} in blocks of {msg.block}"
    if isinstance(msg, P.CopyRange):
        return f"server-{msg.origin} seqs {msg.lo + 1}..{msg.hi}"
    return ""
