"""ClientDesk, requests in and replies out: reads answered at once, writes that
make one event and are answered once they have their copies, retries, and (issue
13) a write refused without a majority in reach, a write that waited too long,
and the copy a later try makes and its reply names.

No sockets: the desk is the one of tests/desk_rig.py.
"""
from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import protocol as P
from servers.state import SocialState
from tests.desk_rig import USERS, WALL, Desk, listen, req, retry


pytestmark = pytest.mark.timeout(60)


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


# --- issue 13: majority, write timeout, the copy a retry keeps ----------------------------
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
