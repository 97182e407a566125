"""The gateway's link to the broker: async ZeroMQ, Lazy Pirate, two shared DEALERs.

The first try of a request the fast path carries (``protocol.FAST_OPS``: posts,
messages, follows, feeds, chats...) goes on a shared DEALER to the broker's fast
path (``broker/fast_path.py``, a proxy in C); every other request, and every retry,
on one to its routed frontend. A post or message carries the gateway's Lamport
stamp from when it was issued (``Request.stamp``), so writes keep their order.

Every HTTP request of every user becomes one ``protocol.Request`` sent on one
shared DEALER (a CURVE client with an ephemeral keypair, checking the broker's
key). The event loop watches that socket (``Lane``): every reply is taken off it
as it comes and handed to the waiting request by its ``rid``; a reply whose rid
nobody waits for any more (a late answer to a try that timed out) is logged and
dropped.

Lazy Pirate as in ``clients/connection.py``: when no reply comes within
``request_timeout`` the same request -- same ``rid``, ``attempt`` = tries - 1 --
goes out again until ``request_deadline``. The retry goes out on a *fresh* socket
of its own (a "lane"), closed when the request ends: the shared socket stays for
everybody else, and a reply still queued for the earlier try can no longer answer
the retry (only a new socket forgets it). An ``unavailable`` reply is retried the
same way after a growing delay.

The gateway keeps its own Lamport clock (every send ticks, every reply merges) and
physical clock (Cristian from every server's reply), and logs every interaction
to ``logs/web.log`` in the common line format.
"""
from __future__ import annotations

import asyncio
import time

import msgspec
import zmq

from clients.connection import ClientError, Connection, new_rid, peer_name
from clients.pipeline import STAMPED_OPS
from common import keys, protocol, sockets
from common.clock import LamportClock, PhysicalClock, cristian
from common.config import Config
from common.log import ProcessLog, args_brief

KEY_POLL = 0.05
"""Seconds between two looks for the broker's key while the broker starts."""
CLOCK_NOTE_THRESHOLD = 0.001
"""Clock corrections larger than this (seconds) are written to the log."""
NOBLOCK, MORE_NOBLOCK = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE)
EVENTS, POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
"""pyzmq's flags as plain ints: its enums cost a Python call at every ``|`` and ``&``."""


class Lane:
    """One DEALER on the broker's frontend, read by the event loop.

    A plain (not ``zmq.asyncio``) socket: sends never wait (``NOBLOCK``), and the
    loop watches the socket's file descriptor for as long as the lane lives, reading
    every reply there is at each wake-up. ``zmq.asyncio`` spent a future, and a
    registration of the descriptor with the loop, on every send and every receive:
    most of what this link cost per request. The descriptor is edge-triggered and
    any operation on the socket may consume its edge, so after every send the
    socket is read too (``_read``: until nothing is left)."""

    def __init__(self, link: "BrokerLink", name: str, endpoint: str | None = None) -> None:
        self.link = link
        self.name = name
        # the fast path's replies may come several in one REPS
        self.batching = endpoint == link.fast_endpoint
        """The fast path: the requests of one turn of the event loop go together, in
        one ``REQS`` (``_send_batch``); its replies may come several in one ``REPS``."""
        self.route = protocol.FAST_TO_CLIENT if self.batching else protocol.BROKER_TO_CLIENT
        self.outbox: list[bytes] = []
        self.pending: dict[str, asyncio.Future] = {}
        public, secret = zmq.curve_keypair()              # ephemeral: any key is let in
        self.socket = sockets.tune(link.context.socket(zmq.DEALER), link.config)
        self.socket.linger = 0
        keys.client_socket(self.socket, public, secret, link.broker_key)
        self.socket.connect(endpoint or link.endpoint)
        self.loop = asyncio.get_running_loop()
        self.fd = self.socket.FD
        self.loop.add_reader(self.fd, self._read)

    def send(self, body: protocol.Request) -> bool:
        """Tick the gateway's clock and send ``body`` stamped with it; False if the
        socket would block (its queue to the broker is full): that try is lost, and
        the caller's wait for its reply times out and retries, as for any lost try.
        On the fast path ``body`` waits for the end of this turn of the event loop, to
        go with the others sent in it (True: a full queue then gets a warning)."""
        if self.batching:
            if not self.outbox:
                self.loop.call_soon(self._send_batch)
            self.outbox.append(protocol.encode_body(body))
            return True
        return self._send_frames(protocol.REQUEST, protocol.encode_body(body))

    def _send_batch(self) -> None:
        """The requests of this loop turn, as few ``REQS`` as FAST_BATCH allows."""
        bodies, self.outbox = self.outbox, []
        if self.socket.closed:
            return                                # closed meanwhile: they retry
        for run in protocol.batches(bodies):
            packed = (protocol.REQUEST, run[0]) if len(run) == 1 else \
                (protocol.REQUESTS, protocol.pack("reqs", run))
            if not self._send_frames(*packed):
                self.link.log.warn(f"not sent: {len(run)} request(s) on {self.name}, whose "
                                   f"queue to the broker is full (they retry)")

    def _send_frames(self, msg_type: str, body: bytes) -> bool:
        stamp = self.link.lamport.tick()
        try:                        # a DEALER queues a whole message or none of it
            self.socket.send(msg_type.encode(), MORE_NOBLOCK)
            self.socket.send(b"%d" % stamp, MORE_NOBLOCK)
            self.socket.send(body, NOBLOCK)
            return True
        except zmq.Again:
            return False
        finally:
            if self._readable():                  # the send took the edge: read it now
                self.loop.call_soon(self._read)

    def _readable(self) -> bool:
        return not self.socket.closed and bool(self.socket.get(EVENTS) & POLLIN)

    def _read(self) -> None:
        """Every reply waiting on the socket, each to its waiter by ``rid``."""
        while self._readable():
            self.link.log.guard(self._deliver, self.socket.recv_multipart(NOBLOCK))

    def _deliver(self, frames: list[bytes]) -> None:
        try:
            incoming = protocol.decode(frames, self.route)
        except protocol.ProtocolError as exc:
            self.link.log.warn(f"dropped a malformed reply on {self.name}: {exc}")
            return
        self.link.lamport.merge(incoming.lamport)
        msg = incoming.msg                   # a REP, or a server's REPS on the fast path
        for reply in (msg.reps if isinstance(msg, protocol.Replies) else (msg,)):
            waiter = self.pending.pop(reply.rid, None)
            if waiter is None or waiter.done():
                self.link.log.recv(peer_name(reply.server),
                                   f"REP rid={reply.rid} ignored (nobody waits for it)")
                continue
            waiter.set_result(reply)

    async def wait(self, rid: str, timeout: float) -> protocol.Reply | None:
        """The reply to ``rid``, or None after ``timeout`` seconds."""
        waiter = self.loop.create_future()
        self.pending[rid] = waiter
        timer = self.loop.call_later(max(0.001, timeout), _no_reply, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            if self.pending.get(rid) is waiter:
                del self.pending[rid]

    def close(self) -> None:
        """Close the socket; whoever waits on it hears "no reply" (and retries)."""
        if self.socket.closed:
            return
        self.loop.remove_reader(self.fd)
        for waiter in self.pending.values():
            _no_reply(waiter)
        self.pending.clear()
        self.socket.close(linger=0)


def _no_reply(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class BrokerLink:
    """The gateway's client of the broker: ``await link.request(op, user, args)``."""

    def __init__(self, config: Config, log: ProcessLog, lamport: LamportClock,
                 clock: PhysicalClock) -> None:
        self.config = config
        self.log = log
        self.lamport = lamport
        self.clock = clock
        self.endpoint = config.endpoint(config.frontend_port)
        self.fast_endpoint = config.endpoint(config.fast_frontend_port)
        self.context = zmq.Context()
        self.context.linger = 0
        self.broker_key: bytes | None = None
        self.shared: Lane | None = None
        self.fast: Lane | None = None
        """The broker's fast path (``broker/fast_path.py``): the first try of every
        request in ``FAST_OPS``; every other request, and every retry, is routed."""
        self.requests = 0
        self.retries = 0

    # --- the one verb ---------------------------------------------------------------
    def build(self, op: str, user: str | None, args: dict, token: str | None = None,
              server: int | None = None) -> protocol.Request:
        """A validated request with a fresh rid; ClientError(bad_request) if invalid."""
        try:
            return protocol.request(new_rid(), op, user, args, server, self.clock.stamp(), token,
                                    self.lamport.tick() if op in STAMPED_OPS else None)
        except protocol.ProtocolError as exc:
            raise ClientError(protocol.ERR_BAD_REQUEST, str(exc)) from None

    async def request(self, op: str, user: str | None, args: dict, token: str | None = None,
                      server: int | None = None) -> dict:
        """Run one operation; its result with ``server`` (who answered) added."""
        return await self.exchange(self.build(op, user, args, token, server))

    async def exchange(self, body: protocol.Request, deadline_s: float | None = None) -> dict:
        """Lazy Pirate: send ``body`` until a final reply or the deadline."""
        self.requests += 1
        patience = self.config.request_timeout + (
            body.args.wait if body.op == protocol.OP_LISTEN else 0.0)
        deadline = time.monotonic() + (self.config.request_deadline
                                       if deadline_s is None else deadline_s) + patience
        await self._wait_for_broker_key(deadline)
        fast = body.op in protocol.FAST_OPS and body.server is None
        lane = self.fast if fast else self.shared
        own_lane: Lane | None = None
        retry_delay = self.config.retry_first_delay
        tries = 0
        try:
            while True:
                tries += 1
                sent_at = self._send(lane, body, tries)
                reply = await lane.wait(body.rid, min(deadline, sent_at + patience) - time.monotonic())
                if reply is None:
                    if own_lane is not None:
                        own_lane.close()
                    if time.monotonic() >= deadline:
                        raise ClientError(protocol.ERR_UNAVAILABLE,
                                          f"no reply from the broker at {self.endpoint} "
                                          f"after {tries} {'try' if tries == 1 else 'tries'}")
                    self.retries += 1
                    self._check_broker_key()
                    own_lane = lane = Lane(self, f"retry lane of rid={body.rid}")
                    self.log.warn(f"no reply to try {tries} of rid={body.rid} from the broker "
                                  f"at {self.endpoint}; retrying on a new socket")
                    continue
                self.log.recv(peer_name(reply.server), Connection._describe_reply(body.op, reply))
                self._synchronize_clock(reply, sent_at)
                if reply.ok:
                    if reply.result is None:
                        raise ClientError(protocol.ERR_INTERNAL, "the reply carries no result")
                    return {**reply.result, "server": reply.server}
                code = reply.code or protocol.ERR_INTERNAL
                error = ClientError(code, reply.error or f"request failed ({code})")
                if code not in protocol.RETRYABLE_ERRORS or \
                        time.monotonic() + retry_delay >= deadline:
                    raise error
                await asyncio.sleep(retry_delay)
                retry_delay = min(self.config.retry_max_delay, retry_delay * 2)
        finally:
            if own_lane is not None:
                own_lane.close()

    def send_nowait(self, body: protocol.Request) -> None:
        """Send ``body`` once on the shared socket, answer unawaited (a listen's cancel)."""
        if self.shared is not None:
            self._send(self.shared, body, 2)

    def _send(self, lane: Lane, body: protocol.Request, tries: int) -> float:
        parts = [body.op, f"rid={body.rid}", f"user={body.user}" if body.user else "",
                 args_brief(body.args)]
        if body.server is not None:
            parts.append(f"server={body.server}")
        if tries > 1:                # a retry's copy of a write wins over earlier tries'
            parts.append(f"try={tries}")
            body = msgspec.structs.replace(body, attempt=tries - 1)
        if not lane.send(body):
            parts.append("(not sent: the queue to the broker is full)")
        self.log.send("broker", " ".join([part for part in parts if part]))
        return time.monotonic()

    async def _wait_for_broker_key(self, deadline: float) -> None:
        """A broker starting on this data folder writes its key at once: wait for it."""
        while self.shared is None:
            try:
                self.broker_key = keys.broker_public_key(self.config.data_dir)
            except keys.NoBrokerKey as exc:
                if time.monotonic() >= deadline:
                    raise ClientError(protocol.ERR_UNAVAILABLE, str(exc)) from None
                await asyncio.sleep(KEY_POLL)
                continue
            except keys.KeyProblem as exc:
                raise ClientError(protocol.ERR_UNAVAILABLE, str(exc)) from None
            if self.shared is None:
                self._open_lanes()
                self.log.note(f"connected to the broker at {self.endpoint} (CURVE, "
                              f"broker key {self.broker_key[:8].decode()}…)")

    def _check_broker_key(self) -> None:
        """A broker started anew on a fresh data folder has a new key: the old one
        would fail every handshake. Read it again, and if it changed, open the shared
        socket anew with it."""
        try:
            key = keys.broker_public_key(self.config.data_dir)
        except keys.KeyProblem:
            return
        if key != self.broker_key and self.shared is not None:
            self.broker_key = key
            self.shared.close()
            self.fast.close()
            self._open_lanes()
            self.log.note(f"the broker's key changed (now {key[:8].decode()}…): reconnected")

    def _open_lanes(self) -> None:
        self.shared = Lane(self, "the shared socket")
        self.fast = Lane(self, "the fast path", self.fast_endpoint)

    def _synchronize_clock(self, reply: protocol.Reply, sent_at: float) -> None:
        """Cristian, as ``clients/connection.py``: only servers' replies correct it."""
        if reply.server is None:
            return
        rtt = time.monotonic() - sent_at
        delta = cristian(self.clock, reply.time, rtt)
        if abs(delta) > CLOCK_NOTE_THRESHOLD:
            self.log.note(f"clock corrected by {delta * 1000:+.1f} ms from "
                          f"{peer_name(reply.server)} (rtt {rtt * 1000:.1f} ms)")

    def close(self) -> None:
        for lane in (self.shared, self.fast):
            if lane is not None:
                lane.close()
        self.context.term()

