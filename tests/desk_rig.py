"""What the ClientDesk unit tests (tests/test_client_desk*_unit.py) share: one
ClientDesk with no sockets (``Desk``).

Replies go to a recorder (checked valid on the wire), the quorum is a real
``Replication`` over a fake store, and ``turn()`` does what ``Server.after_batch``
does once per loop turn: take the turn's events, wake the listens of the users
they concern, answer the writes that have their copies.
"""
from __future__ import annotations

import msgspec

from common import protocol as P
from common.clock import LamportClock, PhysicalClock
from common.config import Config
from servers.accounts import Accounts
from servers.catchup import CatchUp
from servers.client_desk import ClientDesk
from servers.listeners import Listeners
from servers.peers import SERVING, Peer, Peers
from servers.replication import Replication
from servers.replication_lag import ReplicationLag
from servers.requests import ClientRequests
from servers.state import SocialState
from tests.fakes import FakeStore, TalkLog


CONFIG = Config().validate()
T0 = 1000.0
ME = 1
WALL = 1.7e9
USERS = ("alice", "bob", "carol", "dave")
PASSWORD = "desk-pass-123"


def token_of(user: str) -> str:
    return f"{user}-token-".ljust(43, "x")


def req(rid: str, op: str, user: str | None, **args) -> P.Request:
    if "with_" in args:
        args["with"] = args.pop("with_")
    return P.request(rid, op, user, args, None, WALL)


def listen(rid: str, user: str, wait: float = 5.0, since: int = 0) -> P.Request:
    return req(rid, P.OP_LISTEN, user, wait=wait, since=since)


class Desk:
    def __init__(self, replicas: int = 1, me: int = ME) -> None:
        self.now = T0
        self.state = SocialState()
        self.peers = Peers(me, CONFIG.peer_timeout)
        self.catchup = CatchUp(self.state, self.peers, CONFIG.gap_grace, CONFIG.fetch_timeout)
        self.store = FakeStore()
        self.repl = Replication(me, self.state, self.store, self.peers, self.catchup, replicas)
        self.listeners = Listeners()
        self.log = TalkLog()
        self.replies: list[tuple[bytes, P.Reply]] = []
        self.why: str | None = None
        self.events_made = 0
        self.tokens: dict[str, str] = {}
        self.accounts = Accounts(self.state, time_cost=1, memory_kib=64, hashes_per_s=1e6)
        self.desk = ClientDesk(me, ClientRequests(self.state), self.repl, self.listeners,
                               ReplicationLag(me), LamportClock(), PhysicalClock(), self.log,
                               replicas=replicas, reply=self._reply,
                               unavailable=lambda: self.why, accounts=self.accounts)

    def _reply(self, route: bytes, reply: P.Reply) -> None:
        P.validate(reply)
        self.replies.append((route, reply))

    def send(self, msg: P.Request, route: bytes | None = None) -> list[P.Reply]:
        """A request in (with its user's session token, once they logged in); the
        replies it got at once."""
        msg = self.signed(msg)
        before = len(self.replies)
        self.desk.on_REQ(route or msg.user.encode(), msg, self.now)
        return [r for _, r in self.replies[before:]]

    def signed(self, msg: P.Request) -> P.Request:
        """``msg`` with its user's token, once they logged in (unless it has one)."""
        if msg.token is None and msg.user in self.tokens and msg.op not in P.OPEN_OPS:
            return msgspec.structs.replace(msg, token=self.tokens[msg.user])
        return msg

    def turn(self) -> list[tuple[bytes, P.Reply]]:
        """Server.after_batch: the replies of this loop turn."""
        before = len(self.replies)
        fresh, outbox = self.repl.take_turn()
        self.events_made += len(outbox)
        concerned = self.state.concerned(fresh)
        if concerned:
            self.desk.wake(concerned, self.now)
        self.desk.answer_acked(self.now)
        return self.replies[before:]

    def ask(self, msg: P.Request) -> P.Reply:
        """A request answered within its turn (replicas=1, or copies already there)."""
        first = self.send(msg)
        got = first + [r for route, r in self.turn() if r.rid == msg.rid]
        assert len(got) == 1, got
        return got[0]

    def setup(self, follows=(("bob", "alice"),)) -> "Desk":
        for user in USERS:
            self.sign_up(user)
        for user, target in follows:
            assert self.ask(req(f"f-{user}-{target}", P.OP_FOLLOW, user, target=target)).ok
        self.events_made = 0
        return self

    def sign_up(self, user: str) -> None:
        """Register and log in (each answered within its turn)."""
        assert self.ask(req(f"reg-{user}", P.OP_REGISTER, user, password=PASSWORD)).ok
        login = P.request(f"in-{user}", P.OP_LOGIN, user, {"password": PASSWORD}, None, WALL,
                          token_of(user))
        assert self.ask(login).ok
        self.tokens[user] = token_of(user)

    def add_peer(self, pid: int, phase: str = SERVING) -> None:
        self.peers.table[pid] = Peer(pid, T0 + 100.0, phase, {})

    def ack(self, pid: int) -> None:
        self.repl.on_ACK(P.Ack(sender=pid, vv=self.state.vv()), self.now)


def retry(msg: P.Request, attempt: int) -> P.Request:
    return msgspec.structs.replace(msg, attempt=attempt)
