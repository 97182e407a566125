"""ClientDesk (requests in, replies out) and Listeners (parked long polls).

No sockets: replies go to a recorder (checked valid on the wire), the quorum is
a real ``Replication`` over a fake store, and ``turn()`` does what
``Server.after_batch`` does once per loop turn: take the turn's events, wake
the listens of the users they concern, answer the writes that have their copies.
"""
from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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

pytestmark = pytest.mark.timeout(60)

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


# --- reads ----------------------------------------------------------------------------------
def test_reads_are_answered_at_once_and_write_nothing():
    d = Desk().setup()
    d.ask(req("p1", P.OP_POST, "alice", text="hello"))
    count, d.events_made = d.state.count, 0
    [feed] = d.send(req("r1", P.OP_FEED, "bob", limit=10))
    assert feed.ok and [p["text"] for p in feed.result["posts"]] == ["hello"]
    assert feed.result["posts"][0]["followed"] is True
    [following] = d.send(req("r2", P.OP_FOLLOWING, "bob"))
    assert following.result == {"user": "bob", "following": ["alice"], "total": 1}
    [users] = d.send(req("r3", P.OP_USERS, "bob"))
    assert users.result == {"users": sorted(USERS), "total": len(USERS)}
    [chat] = d.send(req("r4", P.OP_CHAT, "bob", with_="alice", limit=5))
    assert chat.ok and chat.result["messages"] == []
    [unknown] = d.send(req("r5", P.OP_CHAT, "bob", with_="zed", limit=5))
    assert (unknown.ok, unknown.code) == (False, P.ERR_UNKNOWN_USER)
    assert d.turn() == [] and d.events_made == 0 and d.state.count == count


def test_an_operation_of_the_broker_is_refused():
    d = Desk()
    [r] = d.send(P.request("s1", P.OP_STATUS, None, {}, None, WALL), route=b"x")
    assert (r.ok, r.code) == (False, P.ERR_BAD_REQUEST)


# --- writes and the quorum --------------------------------------------------------------------
def test_a_write_makes_one_event_answered_once_it_has_its_copies():
    d = Desk(replicas=1).setup()                     # users registered while alone
    d.repl.replicas = d.desk.replicas = 3            # then two peers join the cluster
    d.add_peer(2)
    d.add_peer(3)
    assert d.send(req("p1", P.OP_POST, "alice", text="hi")) == []
    assert d.turn() == [] and d.events_made == 1
    d.ack(2)
    assert d.turn() == []                            # 2 copies of 3
    d.ack(3)
    [(route, reply)] = d.turn()
    assert route == b"alice" and reply.ok and reply.rid == "p1"
    assert reply.result["post"]["id"] == "p1" and reply.result["post"]["text"] == "hi"
    assert reply.result["replicas"] == 3
    assert d.turn() == [] and d.events_made == 1
    assert [e.id for e in d.store.appended if e.kind == P.EV_POST] == ["p1"]


def test_a_retry_is_answered_again_without_a_new_event():
    d = Desk(replicas=1).setup()
    d.repl.replicas = d.desk.replicas = 2
    d.add_peer(2)
    msg = req("p1", P.OP_POST, "alice", text="hi")
    d.send(msg)
    d.turn()
    d.send(msg)                                      # the client timed out: retry, still waiting
    assert d.turn() == []
    d.ack(2)
    replies = [r for _, r in d.turn()]
    assert [r.rid for r in replies] == ["p1", "p1"] and all(r.ok for r in replies)
    count = d.state.count
    d.send(msg)                                      # and once more, after the answer
    [(_, again)] = d.turn()
    assert again.result["post"] == replies[0].result["post"] and again.result["replicas"] == 2
    assert d.state.count == count and d.events_made == 1
    assert d.log.has("retry of p1: already applied as 1:")


def test_a_rid_reused_by_another_user_is_refused():
    d = Desk().setup()
    d.ask(req("p1", P.OP_POST, "alice", text="mine"))
    [r] = d.send(req("p1", P.OP_POST, "bob", text="stolen"))
    assert (r.ok, r.code) == (False, P.ERR_BAD_REQUEST)
    assert "already used by another user" in r.error
    assert d.turn() == [] and d.events_made == 1
    assert d.state.events["p1"].user == "alice"


def test_nothing_is_served_while_not_serving():
    d = Desk().setup()
    d.why = "server-1 is syncing"
    count = d.state.count
    for msg in (req("a", P.OP_FEED, "bob", limit=3), req("b", P.OP_POST, "bob", text="x"),
                listen("c", "bob")):
        [r] = d.send(msg)
        assert (r.ok, r.code, r.error) == (False, P.ERR_UNAVAILABLE, "server-1 is syncing")
    assert d.turn() == [] and d.state.count == count and len(d.listeners) == 0


def test_an_unknown_target_is_refused_without_an_event():
    d = Desk().setup()
    [r] = d.send(req("f", P.OP_FOLLOW, "bob", target="zed"))
    assert r.code == P.ERR_UNKNOWN_USER and d.turn() == [] and d.events_made == 0


OPS = st.lists(st.tuples(st.sampled_from(["alice", "bob"]), st.sampled_from(["r1", "r2", "r3"]),
                         st.sampled_from(["one", "two"])), max_size=15)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_each_request_gets_one_answer_and_each_rid_at_most_one_event(ops):
    d = Desk().setup(follows=())
    owner: dict[str, tuple[str, str]] = {}
    for user, rid, text in ops:
        reply = d.ask(req(rid, P.OP_POST, user, text=text))
        if rid not in owner:
            owner[rid] = (user, text)
        if owner[rid][0] == user:
            assert reply.ok and reply.result["post"]["id"] == rid
            assert reply.result["post"]["text"] == owner[rid][1]   # the first write's
        else:
            assert reply.code == P.ERR_BAD_REQUEST
    assert d.events_made == len(owner)
    assert {rid: (e.user, e.data.text) for rid, e in d.state.events.items()
            if e.kind == P.EV_POST} == owner


# --- listen ------------------------------------------------------------------------------------
def test_listen_parks_and_wakes_only_for_the_users_a_write_concerns():
    d = Desk().setup(follows=(("bob", "alice"),))
    assert d.send(listen("lb", "bob")) == []
    assert d.send(listen("ld", "dave")) == []         # dave follows no one
    assert len(d.listeners) == 2 and d.turn() == []
    bob_park = d.listeners.by_user["bob"]["lb"]

    d.ask(req("p-carol", P.OP_POST, "carol", text="nobody follows me"))
    assert d.state.concerned([d.state.events["p-carol"]]) == set()
    assert d.listeners.by_user["bob"]["lb"] is bob_park        # not even taken and re-parked
    assert len(d.listeners) == 2

    d.send(req("p-alice", P.OP_POST, "alice", text="for bob"))
    replies = dict((r.rid, r) for _, r in d.turn())
    assert set(replies) == {"p-alice", "lb"}
    items = replies["lb"].result["items"]
    assert [(i["type"], i["id"]) for i in items] == [("post", "p-alice")]
    assert "ld" in d.listeners.by_user["dave"] and "bob" not in d.listeners.by_user
    assert d.state.events["lb"].kind == P.EV_SEEN          # pushed once, replicated

    d.send(req("m1", P.OP_DM, "carol", to="dave", text="psst"))
    replies = dict((r.rid, r) for _, r in d.turn())
    assert [(i["type"], i["id"]) for i in replies["ld"].result["items"]] == [("message", "m1")]
    assert len(d.listeners) == 0


def test_a_woken_listen_with_nothing_new_for_it_stays_parked_with_its_deadline():
    d = Desk().setup(follows=(("bob", "alice"),))
    d.send(listen("lb", "bob", wait=4.0))
    d.desk.wake({"bob"}, d.now + 1.0)                  # woken, but nothing is unseen
    assert d.listeners.by_user["bob"]["lb"].deadline == T0 + 4.0
    assert d.turn() == [] and d.events_made == 0


def test_listen_with_items_waiting_is_answered_without_parking():
    d = Desk().setup(follows=(("bob", "alice"),))
    d.ask(req("p1", P.OP_POST, "alice", text="earlier"))
    reply = d.ask(listen("lb", "bob"))
    assert [i["id"] for i in reply.result["items"]] == ["p1"] and len(d.listeners) == 0
    again = d.ask(listen("lb2", "bob", wait=0.0))     # shown once: nothing the second time
    assert again.result["items"] == [] and again.result["replicas"] is None


def test_an_unanswered_listen_expires_empty_after_its_wait():
    d = Desk().setup()
    d.send(listen("lb", "bob", wait=2.0))
    d.desk.expire_listeners(T0 + 2.0 - 1e-3)
    assert d.replies[-1][1].rid != "lb"
    d.desk.expire_listeners(T0 + 2.0)
    route, reply = d.replies[-1]
    assert (route, reply.rid, reply.ok) == (b"bob", "lb", True)
    assert reply.result == {"user": "bob", "items": [], "replicas": None}
    n = len(d.replies)
    d.desk.expire_listeners(T0 + 10.0)
    assert len(d.replies) == n and len(d.listeners) == 0


def test_a_resent_listen_replaces_the_old_park():
    d = Desk().setup()
    d.send(listen("lb", "bob", wait=5.0))
    d.now = T0 + 1.0
    d.send(listen("lb", "bob", wait=5.0), route=b"bob-again")   # reconnected: a new route
    assert len(d.listeners) == 1
    n = len(d.replies)
    d.desk.expire_listeners(T0 + 5.0)                  # the old park's deadline: nothing
    assert len(d.replies) == n
    assert d.listeners.next_deadline() == T0 + 6.0
    d.desk.expire_listeners(T0 + 6.0)
    assert [(route, r.rid) for route, r in d.replies[n:]] == [(b"bob-again", "lb")]


@pytest.mark.parametrize("how", ["stop", "items"])
def test_a_resent_listen_that_is_answered_leaves_no_park_behind(how):
    """Re-sent with wait 0 (the user stopping), or once items wait for it (a peer's
    post applied this turn, its wake not yet run): answered at once, and the old
    park must not answer the same rid again at its deadline."""
    d = Desk().setup(follows=(("bob", "alice"),))
    d.send(listen("lb", "bob", wait=5.0))
    if how == "items":
        d.repl.receive(P.Event(id="p2", kind=P.EV_POST, user="alice", lamport=900, ts=WALL,
                               origin=2, seq=1, data=P.EventData(text="from a peer")))
    n = len(d.replies)
    d.desk.on_REQ(b"bob", d.signed(listen("lb", "bob", wait=0.0 if how == "stop" else 5.0)),
                  d.now)
    d.desk.answer_acked(d.now)
    [(_, reply)] = d.replies[n:]
    assert reply.ok and reply.rid == "lb" and len(d.listeners) == 0
    assert [i["id"] for i in reply.result["items"]] == ([] if how == "stop" else ["p2"])
    d.desk.expire_listeners(T0 + 10.0)
    assert len(d.replies) == n + 1                     # answered once


@pytest.mark.parametrize("order", ["stop first", "post first"])
def test_a_listen_stopped_on_another_server_marks_nothing_shown_where_it_was_parked(order):
    """bob's listen is parked on A; the broker's pool changes and his Ctrl-C (the same
    rid, a later try, wait 0) reaches B, which has nothing to show. alice's post then
    wakes the park on A. Whichever copy of that rid a server makes first, the one that
    counts everywhere marks nothing shown: the post stays in bob's notifications."""
    a, b = Desk().setup(), Desk(me=2)
    for event in sorted(a.state.events.values(), key=lambda e: e.seq):
        b.repl.receive(event)                         # B holds what A holds
    b.tokens = dict(a.tokens)
    a.send(listen("lb", "bob", wait=25.0))
    assert len(a.listeners) == 1
    assert b.send(retry(listen("lb", "bob", wait=0.0), 1)) == []     # a write, not a read
    [(_, stop)] = b.turn()
    assert stop.ok and stop.rid == "lb" and stop.result["items"] == []
    assert b.events_made == 1
    tombstone = b.state.events["lb"]
    assert tombstone.kind == P.EV_SEEN and tombstone.data.shown == [] and tombstone.attempt == 1
    if order == "stop first":                         # A learns of B's SEEN, then wakes
        a.repl.receive(tombstone)
    post = a.ask(req("p1", P.OP_POST, "alice", text="still there?"))   # wakes the park
    assert post.ok
    if order == "post first":                         # A woke it first, then learns of B's
        assert a.state.events["lb"].data.shown == ["p1"]
        a.repl.receive(tombstone)
    assert a.state.events["lb"].data.shown == []      # B's later try counts
    assert [p["id"] for p in a.state.notifications("bob")] == ["p1"]


def test_parked_listens_go_elsewhere_when_the_server_stops_serving():
    d = Desk().setup()
    d.send(listen("lb", "bob"))
    d.send(listen("lc", "carol"))
    d.why = "server-1 is joining"
    d.desk.wake_all(d.now)
    got = {r.rid: r for _, r in d.replies[-2:]}
    assert set(got) == {"lb", "lc"}
    assert all(r.code == P.ERR_UNAVAILABLE for r in got.values())
    assert len(d.listeners) == 0


# --- Listeners alone ------------------------------------------------------------------------------
def args(wait: float = 5.0) -> P.Args:
    return P.Args(wait=wait, since=0)


def test_listeners_index_by_user_and_skip_stale_deadlines():
    ls = Listeners()
    ls.park(b"a", "r1", "bob", args(), 10.0)
    ls.park(b"b", "r2", "bob", args(), 12.0)
    ls.park(b"c", "r3", "carol", args(), 11.0)
    assert len(ls) == 3 and ls.next_deadline() == 10.0
    ls.park(b"a2", "r1", "bob", args(), 20.0)         # re-sent: the 10.0 entry is stale
    assert len(ls) == 3 and ls.next_deadline() == 11.0
    assert [p.rid for p in ls.take(["carol", "nobody"])] == ["r3"]
    assert ls.next_deadline() == 12.0
    assert [p.rid for p in ls.take_expired(15.0)] == ["r2"]
    assert ls.drop("r2") is None and ls.drop("r1").route == b"a2"
    assert len(ls) == 0 and ls.by_user == {} and ls.next_deadline() is None


LS_OPS = st.lists(st.one_of(
    st.tuples(st.just("park"), st.sampled_from(["r1", "r2", "r3", "r4"]),
              st.sampled_from(["bob", "carol", "dave"]), st.integers(0, 10)),
    st.tuples(st.just("drop"), st.sampled_from(["r1", "r2", "r3", "r4"]), st.just(""),
              st.just(0)),
    st.tuples(st.just("take"), st.just(""), st.sampled_from(["bob", "carol", "dave"]),
              st.just(0)),
    st.tuples(st.just("expire"), st.just(""), st.just(""), st.integers(0, 10))), max_size=30)


@settings(max_examples=300, deadline=None)
@given(LS_OPS, st.lists(st.booleans(), min_size=30, max_size=30))
def test_listeners_behave_like_a_dict_of_parked_polls(ops, look):
    ls = Listeners()
    model: dict[str, tuple[str, float]] = {}           # rid -> (user, deadline)
    for (op, rid, user, t), peek in zip(ops, look):
        if op == "park":
            ls.park(b"r", rid, user, args(), float(t))
            model[rid] = (user, float(t))
        elif op == "drop":
            got = ls.drop(rid)
            assert (got is None) == (rid not in model)
            model.pop(rid, None)
        elif op == "take":
            got = {p.rid for p in ls.take([user])}
            assert got == {r for r, (u, _) in model.items() if u == user}
            model = {r: v for r, v in model.items() if v[0] != user}
        else:
            got = sorted(p.rid for p in ls.take_expired(float(t)))
            assert got == sorted(r for r, (_, dl) in model.items() if dl <= t)
            model = {r: v for r, v in model.items() if v[1] > t}
        assert len(ls) == len(model)
        assert {r for polls in ls.by_user.values() for r in polls} == set(model)
        assert all(polls for polls in ls.by_user.values())            # no empty entries
        if peek:                # it drops stale heap entries: not after every step
            assert ls.next_deadline() == (min(dl for _, dl in model.values())
                                          if model else None)


def test_a_list_of_users_stops_at_max_names_and_says_how_many_there_are():
    """A reply always fits the broker's limit: ``users`` lists at most MAX_NAMES."""
    from servers.requests import ClientRequests
    from servers.state import SocialState
    state = SocialState()
    state.users = {f"u{n:06d}": 1 for n in range(P.MAX_NAMES + 5)}
    result = ClientRequests(state).read(P.OP_USERS, "u000001", P.Args())
    assert len(result["users"]) == P.MAX_NAMES and result["total"] == P.MAX_NAMES + 5
    assert len(P.dumps(result)) < P.MAX_REPLY_BYTES


# --- issue 13: majority, write timeout, the copy a retry keeps ----------------------------
def retry(msg: P.Request, attempt: int) -> P.Request:
    return msgspec.structs.replace(msg, attempt=attempt)


def test_without_a_majority_in_reach_a_write_is_refused_at_once_and_makes_nothing():
    d = Desk().setup()
    d.desk._short_of_majority = lambda now: "1 of 3 servers reachable"
    count = d.state.count
    [r] = d.send(req("p1", P.OP_POST, "alice", text="hi"))
    assert (r.ok, r.code, r.error) == (False, P.ERR_UNAVAILABLE,
                                       "unavailable: 1 of 3 servers reachable")
    assert d.turn() == [] and d.state.count == count and d.repl.waiters == []
    [read] = d.send(req("r1", P.OP_FEED, "bob", limit=10))     # reads are still served
    assert read.ok


def test_a_write_waiting_too_long_for_its_copies_is_told_so_and_a_retry_is_safe():
    d = Desk(replicas=1).setup()
    d.repl.replicas = d.desk.replicas = 3
    d.desk.write_wait = 1.2
    d.add_peer(2)
    d.add_peer(3)
    msg = req("p1", P.OP_POST, "alice", text="hi")
    d.send(msg)
    d.turn()
    d.now += 1.1
    d.desk.expire_writes(d.now)
    assert d.turn() == []                            # not yet
    d.now += 0.2
    before = len(d.replies)
    d.desk.expire_writes(d.now)
    [(_, late)] = d.replies[before:]
    assert (late.ok, late.code) == (False, P.ERR_UNAVAILABLE)
    assert "has 1 of the 3 copies it needs after 1.2 s" in late.error
    assert "retry with the same request id" in late.error and d.repl.waiters == []
    d.send(msg)                                      # the retry waits for the same event
    d.ack(2)
    d.ack(3)
    [(_, ok)] = d.turn()
    assert ok.ok and ok.result["replicas"] == 3 and d.events_made == 1


def test_a_later_try_makes_its_own_copy_and_the_reply_names_it():
    d = Desk().setup()
    first = d.ask(req("p1", P.OP_POST, "alice", text="hi"))
    again = d.ask(retry(req("p1", P.OP_POST, "alice", text="hi"), 2))
    assert first.ok and again.ok
    kept = d.state.events["p1"]
    assert kept.attempt == 2 and again.result["post"]["lamport"] == kept.lamport
    assert again.result["post"]["lamport"] != first.result["post"]["lamport"]
    assert [p["id"] for p in d.state.feed("bob", 10)].count("p1") == 1     # stored once
    assert d.log.has("retry of p1 (try 3): held as 1:")
    same = d.ask(retry(req("p1", P.OP_POST, "alice", text="hi"), 2))      # the same try again
    assert same.result["post"] == again.result["post"] and d.state.events["p1"] is kept


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 500), st.integers(1, 3)),
                min_size=1, max_size=3, unique_by=lambda t: t[2]))
def test_the_copy_of_the_highest_try_counts_on_every_server_whatever_the_order(copies):
    events = [P.Event(id="r1", kind=P.EV_POST, user="alice", lamport=lam, ts=WALL,
                      origin=origin, seq=1, data=P.EventData(text="hi"), attempt=attempt)
              for attempt, lam, origin in copies]
    best = max(events, key=lambda e: e.attempt)
    for order in (events, events[::-1]):
        state = SocialState()
        for e in order:
            state.apply(e)
        assert state.events["r1"].attempt == best.attempt
        assert state.events["r1"] == min(events, key=P.copy_key)


def test_a_first_try_encodes_as_before_attempt_was_a_field():
    e = P.Event(id="r1", kind=P.EV_POST, user="alice", lamport=1, ts=WALL, origin=1, seq=1,
                data=P.EventData(text="hi"))
    assert b"attempt" not in P.dumps(e)
    assert b'"attempt":2' in P.dumps(msgspec.structs.replace(e, attempt=2))
