"""A bare client of the broker's frontend, for the tools that load or watch a
cluster (the benchmark's load workers and clusters, the demo's status).

A user's client is ``clients/connection.py``: Lazy Pirate retries, clock
correction, a log. These tools want the opposite: one try per request, which
either answers within its timeout or counts as lost, and nothing else on the way.
Once ``token`` is set (``log_in``), every request carries it.
"""
from __future__ import annotations

import secrets
import time
import uuid

import zmq

from common import keys
from common import protocol as P
from common import sockets
from common.clock import LamportClock
from common.config import Config


class BrokerClient:
    """One raw DEALER on the broker's frontend, sending requests as ``user``; a CURVE
    client with an ephemeral keypair that checks the broker's ``broker_key``."""

    def __init__(self, ctx: zmq.Context, endpoint: str, broker_key: bytes,
                 user: str | None = None, config: Config | None = None) -> None:
        self.ctx = ctx
        self.config = config or Config()      # the transport options (common/sockets.py)
        self.endpoint = endpoint
        self.broker_key = broker_key
        self.public, self.secret = zmq.curve_keypair()
        self.user = user
        self.lamport = LamportClock()
        self.prefix = uuid.uuid4().hex[:10]
        self.sent = 0
        self.token: str | None = None
        self.sock = self._open()

    def _open(self) -> zmq.Socket:
        sock = sockets.tune(self.ctx.socket(zmq.DEALER), self.config)
        sock.linger = 0
        keys.client_socket(sock, self.public, self.secret, self.broker_key)
        sock.connect(self.endpoint)
        self.link = P.Endpoint(sock, P.BROKER_TO_CLIENT, self.lamport)
        return sock

    def request(self, op: str, args: dict, timeout: float,
                token: str | None = None) -> tuple[str, dict | None]:
        """(rid, the reply's body); the body is None when no reply came within ``timeout``."""
        self.sent += 1
        rid = f"{self.prefix}-{self.sent}"
        self.link.send(P.request(rid, op, self.user, args, None, time.time(),
                                 token or self.token))
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0 \
                and self.sock.poll(max(1, int(remaining * 1000))):
            reply = self.link.receive(self.sock.recv_multipart()).msg
            if reply.rid == rid:
                return rid, P.to_builtins(reply)
        self.sock.close(0)                   # a late reply must not answer the next request
        self.sock = self._open()
        return rid, None

    def log_in(self, password: str, timeout: float, deadline: float = 30.0) -> str | None:
        """Log in as ``user`` (registering the name if nobody owns it), retrying what
        may pass (no reply, busy, throttled); None once logged in, else what went wrong."""
        token = secrets.token_urlsafe(32)
        give_up = time.monotonic() + deadline
        last = "no reply"
        while time.monotonic() < give_up:
            _, reply = self.request(P.OP_LOGIN, {"password": password}, timeout, token=token)
            code = None if reply is None else reply.get("code")
            if reply is not None and reply["ok"]:
                self.token = token
                return None
            if code == P.ERR_NO_ACCOUNT:
                _, reply = self.request(P.OP_REGISTER, {"password": password}, timeout)
                code = None if reply is None or reply["ok"] else reply.get("code")
                if code in (None, P.ERR_NAME_TAKEN, P.ERR_UNAVAILABLE):
                    continue                 # registered (by us, or just before): log in
            if code not in (None, P.ERR_UNAVAILABLE, P.ERR_THROTTLED):
                return f"login as {self.user}: {code}: {reply.get('error')}"
            last = code or "no reply"
            time.sleep(0.2)
        return f"login as {self.user}: {last} for {deadline:.0f} s"

    def status(self, timeout: float) -> dict | None:
        """The broker's ``status`` answer, or None if none comes in time."""
        _, reply = self.request(P.OP_STATUS, {}, timeout)
        return reply["result"] if reply is not None and reply["ok"] else None

    def close(self) -> None:
        self.sock.close(0)
