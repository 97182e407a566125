"""The replies a server's loop turn has for users of the fast path, sent together.

A pipelining user (``clients/pipeline.py``) sends many requests at once, often in
one ``REQS``; the end of the server's turn answers them together (one flush, one
``EVENT``, one round of ACKs made their writes safe). Rather than one message per
reply, ``FastReplies`` gathers each turn's replies per user connection (the ROUTER
identity in front of them) and ``take`` hands them out as few messages as it can:
one ``REPS`` of up to ``FAST_BATCH`` replies and ``FAST_BATCH_BYTES`` of bodies, or
a ``REP`` when a reply is alone or too big to share a message. Replies to one
connection keep their order.

Pure: no sockets; the server sends what ``take`` returns (``servers/fast_link.py``).
"""
from __future__ import annotations

from common import protocol as P


class FastReplies:
    def __init__(self, batch: int = P.FAST_BATCH, batch_bytes: int = P.FAST_BATCH_BYTES) -> None:
        self.batch = batch
        self.batch_bytes = batch_bytes
        self._waiting: dict[bytes, list[bytes]] = {}    # route -> encoded reply bodies

    def add(self, route: bytes, reply: P.Reply) -> None:
        self._waiting.setdefault(bytes(route), []).append(P.encode_body(reply))

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def take(self) -> list[tuple[bytes, str, bytes]]:
        """``(route, type, body)`` of every message that carries this turn's replies,
        in order per route; nothing is left waiting."""
        out = [self._message(route, run)
               for route, bodies in self._waiting.items()
               for run in P.batches(bodies, len, self.batch, self.batch_bytes)]
        self._waiting.clear()
        return out

    @staticmethod
    def _message(route: bytes, bodies: list[bytes]) -> tuple[bytes, str, bytes]:
        if len(bodies) == 1:
            return route, P.REPLY, bodies[0]
        return route, P.REPLIES, P.pack("reps", bodies)
