"""A server's side of the pulls between servers: FETCH answered, EVENTS applied, ACKs taken.

``peer_links.py`` carries the messages; this is what they mean here. A peer's
FETCH is answered with up to ``fetch_batch`` of the events I hold beyond its
vector, with my vector as far as it is durable (the asker may be an origin
counting copies) and ``more`` if I hold further ones. The answer to my own FETCH
(``on_EVENTS``) is applied (``Replication.on_EVENTS``), told to ``CatchUp``, and
while the peer has more I ask again, from what I now hold of the origins it sent.
An ACK goes to ``Replication.on_ACK``, unless the test-only fault (``--drop-rate``)
loses it.

It holds no reference to the server: it is given the roles it hands the messages
to, and the peer links it asks again on, made after it (``listen``).
"""
from __future__ import annotations

from typing import Callable

from common import log_lines as LL
from common import protocol as P
from common.log import ProcessLog


class Pulls:
    """FETCH answered, EVENTS applied and asked again, ACKs taken, for one server."""

    def __init__(self, server_id: int, fetch_batch: int, state, repl, catchup,
                 log: ProcessLog, drops: Callable[[], bool]) -> None:
        self.id = server_id
        self.fetch_batch = fetch_batch
        self.state = state
        self.repl = repl
        self.catchup = catchup
        self.log = log
        self.drops = drops                       # test-only fault: lose this ACK
        self.links = None

    def listen(self, links) -> None:
        """The peer links, made after me: they hand me what comes, I ask again on them."""
        self.links = links

    def answer_FETCH(self, msg: P.Fetch) -> P.Events:
        limit = min(msg.limit, self.fetch_batch)
        events = self.state.events_after(msg.after, limit + 1)
        # my vector as far as it is durable: the asker may be an origin counting copies
        vv, sums = self.repl.durable_vv()
        return P.Events(sender=self.id, events=events[:limit], vv=vv,
                        more=len(events) > limit, sums=sums)

    def on_ACK(self, msg: P.Ack, now: float) -> None:
        if not self.drops():
            self.repl.on_ACK(msg, now)

    def on_EVENTS(self, peer_id: int, msg: P.Events, now: float) -> None:
        """A pull's answer: apply it, and ask again while the peer has more."""
        new = self.repl.on_EVENTS(msg, now)
        self.log.recv(f"server-{peer_id}", LL.FETCHED.format(
            events=len(msg.events), new=new, more=msg.more))
        self.catchup.answered(peer_id, msg.more, now, new)
        if msg.more:
            mine = self.state.vv()
            self.links.fetch(peer_id, {o: mine.get(o, 0) for o in {e.origin for e in msg.events}})
