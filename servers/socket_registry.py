"""A server's sockets: the one ZeroMQ context, the poller of its loop, and its CURVE setup.

Every socket of a server is made here (``socket``), tuned as every TCP socket of
the system is (``common/sockets.py``) and given the server's high-water marks; one
made with a handler is registered with the poller, and the loop drains it into
that handler (``named``: the handler is also given who sent each message,
``P.recv_from``). ``close_socket`` unregisters one and closes it at once (linger 0):
the links re-make theirs (a reconnect, the fast path opened and closed, a halt).

The loop reads ``poller``, ``handlers`` and ``named`` on every turn: the server
holds them as its own (the same objects, no lookup through here on the hot path).

The context is made with linger 0 (``open``), after the roles: a server that cannot
make its keys or start the ZAP handler (``keys.Security``, ``secure``) stops before
any socket exists. The admitted and refused keys are said in the log every
``ALLOWLIST_EVERY`` (``tick``); ``close`` stops the ZAP handler and destroys the
context.

It holds no reference to the server: it is given the configuration and the log.
"""
from __future__ import annotations

import zmq

from common import keys
from common import sockets
from common.config import Config
from common.log import ProcessLog

ALLOWLIST_EVERY = 1.0
"""Seconds between two looks at the allowlist's folder (the ZAP handler also looks at
each new connection)."""


class SocketRegistry:
    """One server's context, poller, socket handlers and CURVE setup."""

    def __init__(self, config: Config, log: ProcessLog) -> None:
        self.config = config
        self.log = log
        self.poller = zmq.Poller()
        self.handlers: dict[zmq.Socket, object] = {}
        self.named: set[zmq.Socket] = set()      # handlers told who sent (P.recv_from)
        self.ctx: zmq.Context | None = None
        self.security: keys.Security | None = None
        self.allowlist_at = 0.0

    def open(self) -> None:
        """The context every socket is made on (linger 0)."""
        self.ctx = zmq.Context()
        self.ctx.linger = 0

    def secure(self, data_dir: str, name: str, server_id: int) -> keys.Security:
        """My keys (made if missing), my admission, the ZAP handler."""
        self.security = keys.Security(self.ctx, data_dir, name, server_id)
        return self.security

    def socket(self, kind: int, handler=None, named: bool = False) -> zmq.Socket:
        """A socket of this server's loop; with a handler, polled and drained by it
        (``named``: the handler is also given who sent each message, ``P.recv_from``)."""
        sock = sockets.tune(self.ctx.socket(kind), self.config)
        sock.sndhwm = self.config.hwm
        sock.rcvhwm = self.config.hwm
        if handler is not None:
            self.poller.register(sock, zmq.POLLIN)
            self.handlers[sock] = handler
            if named:
                self.named.add(sock)
        return sock

    def close_socket(self, sock: zmq.Socket) -> None:
        if sock in self.handlers:
            self.poller.unregister(sock)
            del self.handlers[sock]
            self.named.discard(sock)
        sock.close(0)

    def tick(self, now: float) -> None:
        """Admitted keys, refused ones: said here, every ``ALLOWLIST_EVERY``."""
        if now >= self.allowlist_at:
            self.allowlist_at = now + ALLOWLIST_EVERY
            self.security.log_news(self.log)

    def destroy(self) -> None:
        """The context, and every socket still on it."""
        self.ctx.destroy(0)

    def close(self) -> None:
        self.security.stop()
        self.destroy()
