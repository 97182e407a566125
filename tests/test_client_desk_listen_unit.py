"""Long polls: ``listen`` through the ClientDesk (parked, woken only for the users
a write concerns, expired, resent, stopped elsewhere, moved off a server that
stops serving), and ``Listeners`` alone, which must behave like a dict of parked polls.

No sockets: the desk is the one of tests/desk_rig.py.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import protocol as P
from servers.listeners import Listeners
from servers.requests import ClientRequests
from servers.state import SocialState
from tests.desk_rig import T0, WALL, Desk, listen, req, retry


pytestmark = pytest.mark.timeout(60)


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
