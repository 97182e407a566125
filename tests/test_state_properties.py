"""Property tests of the replicated state: any delivery order gives the same answers."""
from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import protocol as P
from servers.state import SocialState

pytestmark = pytest.mark.timeout(60)

USERS = ["alice", "bob", "carol"]


@st.composite
def histories(draw):
    """Events from up to three origins, each origin's seqs contiguous from 1.
    Some requests are made twice on different origins (a retried request whose
    first server died before replicating): same id, different origin/stamp."""
    n = draw(st.integers(1, 25))
    seqs = {1: 0, 2: 0, 3: 0}
    events = [_event(rid, "register", user, {}, 0, 1, seqs) for rid, user in
              (("r-alice", "alice"), ("r-bob", "bob"), ("r-carol", "carol"))]
    for i in range(n):
        user = draw(st.sampled_from(USERS))
        other = draw(st.sampled_from([u for u in USERS if u != user]))
        kind = draw(st.sampled_from(["post", "dm", "follow", "unfollow"]))
        data = {"post": {"text": f"t{i}"}, "dm": {"to": other, "text": f"m{i}"},
                "follow": {"target": other}, "unfollow": {"target": other}}[kind]
        lamport = draw(st.integers(1, 40))
        origin = draw(st.sampled_from([1, 2, 3]))
        events.append(_event(f"id{i}", kind, user, data, lamport, origin, seqs))
        if draw(st.booleans()) and draw(st.booleans()):
            retry_origin = draw(st.sampled_from([o for o in (1, 2, 3) if o != origin]))
            events.append(_event(f"id{i}", kind, user, data, draw(st.integers(1, 40)),
                                 retry_origin, seqs))
    return events


def _event(rid, kind, user, data, lamport, origin, seqs):
    seqs[origin] += 1
    return P.convert({"id": rid, "kind": kind, "user": user, "lamport": lamport, "ts": 1.0,
                      "origin": origin, "seq": seqs[origin], "data": data}, P.Event)


def _deliver(events, order):
    """Apply events in the given interleaving, keeping each origin's seq order."""
    state = SocialState()
    queues = {o: [e for e in events if e.origin == o] for o in (1, 2, 3)}
    for origin in order:
        if queues[origin]:
            state.apply(queues[origin].pop(0))
    for origin in (1, 2, 3):
        for e in queues[origin]:
            state.apply(e)
    return state


def _answers(state):
    return (state.digest(), state.count,
            [state.feed(u, 50) for u in USERS],
            [state.chat(a, b, 50) for a in USERS for b in USERS if a < b],
            [state.follows(u) for u in USERS],
            [state.notifications(u) for u in USERS])


@settings(max_examples=200, deadline=None)
@given(histories(), st.lists(st.sampled_from([1, 2, 3]), max_size=80),
       st.lists(st.sampled_from([1, 2, 3]), max_size=80))
def test_any_two_delivery_orders_give_identical_state(events, order_a, order_b):
    assert _answers(_deliver(events, order_a)) == _answers(_deliver(events, order_b))


@settings(max_examples=100, deadline=None)
@given(histories())
def test_a_request_made_twice_counts_once_and_the_smaller_stamp_wins(events):
    state = _deliver(events, [])
    by_id: dict[str, list[dict]] = {}
    for e in events:
        by_id.setdefault(e.id, []).append(e)
    assert state.count == len(by_id)
    for rid, copies in by_id.items():
        assert state.events[rid] is min(copies, key=P.copy_key)


@settings(max_examples=100, deadline=None)
@given(histories())
def test_feed_puts_followed_first_each_group_newest_first(events):
    state = _deliver(events, [])
    for user in USERS:
        feed = state.feed(user, 1000)
        flags = [p["followed"] for p in feed]
        assert flags == sorted(flags, reverse=True)
        for group in (True, False):
            keys = [(p["lamport"], p["id"]) for p in feed if p["followed"] is group]
            assert keys == sorted(keys, reverse=True)
        followed = set(state.follows(user))
        assert all((p["author"] in followed) == p["followed"] for p in feed)


def test_notifications_only_cover_posts_made_while_following():
    state = SocialState()
    seqs = {1: 0, 2: 0, 3: 0}
    for e in [
        _event("r1", "register", "alice", {}, 1, 1, seqs),
        _event("r2", "register", "bob", {}, 2, 1, seqs),
        _event("p1", "post", "alice", {"text": "before"}, 3, 1, seqs),
        _event("f1", "follow", "bob", {"target": "alice"}, 4, 1, seqs),
        _event("p2", "post", "alice", {"text": "during"}, 5, 1, seqs),
        _event("u1", "unfollow", "bob", {"target": "alice"}, 6, 1, seqs),
        _event("p3", "post", "alice", {"text": "after"}, 7, 1, seqs),
    ]:
        state.apply(e)
    assert [p["text"] for p in state.notifications("bob")] == ["during"]
    state.apply(_event("s1", "seen", "bob", {"shown": ["p2"], "delivered": []}, 8, 1, seqs))
    assert state.notifications("bob") == []


def test_apply_refuses_a_gap_and_ignores_a_duplicate():
    state = SocialState()
    first = P.Event(id="a", kind="register", user="alice", lamport=1, ts=1.0, origin=1, seq=1,
                    data=P.EventData())
    assert state.apply(first) is True
    assert state.apply(P.Event(**P.to_builtins(first) | {"data": P.EventData()})) is False
    with pytest.raises(ValueError):
        state.apply(msgspec.structs.replace(first, id="b", seq=3))
    assert state.count == 1
