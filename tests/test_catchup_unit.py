"""CatchUp, the role that decides what a server lacks and whom to pull it from.

Pure logic over a real ``SocialState`` and ``Peers`` table: no sockets, a fake
monotonic ``now`` (far from 0.0, which ``lag_since`` uses to mean "a gap is
certain"). Peer tables are built by hand, so a property can put any peer in any
phase, alive or silent, holding anything.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import protocol as P
from common.config import Config
from servers.catchup import CatchUp
from servers.peers import GONE, JOINING, LEAVING, SERVING, SYNCING, Peer, Peers
from servers.state import SocialState

pytestmark = pytest.mark.timeout(60)

CONFIG = Config().validate()
GRACE = CONFIG.gap_grace
FETCH_TIMEOUT = CONFIG.fetch_timeout
T0 = 1000.0
ME = 1
EPS = 1e-6


def ev(origin: int, seq: int) -> P.Event:
    return P.Event(id=f"o{origin}s{seq}", kind=P.EV_POST, user="alice", lamport=seq,
                   ts=1.7e9, origin=origin, seq=seq, data=P.EventData(text=f"t{origin}.{seq}"))


def state_with(vv: dict[int, int]) -> SocialState:
    state = SocialState()
    for origin, n in vv.items():
        for seq in range(1, n + 1):
            state.apply(ev(origin, seq))
    return state


def add_peer(peers: Peers, pid: int, vv: dict[int, int], phase: str = SERVING,
             alive: bool = True, now: float = T0) -> Peer:
    peer = Peer(pid, now + 100.0 if alive else now - 1.0, phase, dict(vv))
    peers.table[pid] = peer
    return peer


def make(mine: dict[int, int] | None = None) -> tuple[CatchUp, SocialState, Peers]:
    state = state_with(mine or {})
    peers = Peers(ME, CONFIG.peer_timeout)
    return CatchUp(state, peers, GRACE, FETCH_TIMEOUT), state, peers


def pulled(due: dict[int, dict[int, int]]) -> dict[int, tuple[int, int]]:
    """origin -> (peer, after) of a ``due()`` answer; fails if an origin is pulled twice."""
    out: dict[int, tuple[int, int]] = {}
    for peer, origins in due.items():
        for origin, after in origins.items():
            assert origin not in out, f"origin {origin} pulled from {out[origin][0]} and {peer}"
            out[origin] = (peer, after)
    return out


# --- gaps: park and release -------------------------------------------------------------
def test_parked_events_come_out_in_seq_order_once_their_predecessor_is_held():
    cu, state, _ = make({2: 1})
    for seq in (4, 3, 6):
        cu.park(ev(2, seq))
    assert cu.next_parked(2) is None                 # 2 is missing: nothing comes next
    state.apply(ev(2, 2))
    got = []
    while (e := cu.next_parked(2)) is not None:
        state.apply(e)
        got.append(e.seq)
    assert got == [3, 4]                             # 5 is missing: 6 waits
    assert list(cu.early[2]) == [6]
    state.apply(ev(2, 5))
    assert cu.next_parked(2).seq == 6
    assert 2 not in cu.early and cu.gaps_repaired == 3
    assert cu.next_parked(2) is None and cu.next_parked(9) is None


def test_a_gap_is_pulled_at_once_even_without_eagerness():
    cu, _, peers = make({2: 1})
    add_peer(peers, 2, {2: 5})
    cu.park(ev(2, 5))
    assert cu.due(T0) == {2: {2: 1}}                 # no grace: the gap is certain


def test_a_peer_ahead_is_pulled_only_after_gap_grace():
    cu, _, peers = make({2: 1})
    add_peer(peers, 2, {2: 3})
    assert cu.due(T0) == {}                           # its EVENT may be in flight
    assert cu.due(T0 + GRACE / 2) == {}
    assert cu.due(T0 + GRACE + EPS) == {2: {2: 1}}


def test_lag_that_resolves_itself_within_the_grace_is_never_pulled_and_forgotten():
    cu, state, peers = make({2: 1})
    add_peer(peers, 2, {2: 2})
    assert cu.due(T0) == {}
    state.apply(ev(2, 2))                             # the EVENT arrived
    assert cu.due(T0 + GRACE / 2) == {}
    assert cu.lag_since == {}                         # the lag is forgotten
    peers.table[2].vv[2] = 3                          # a new lag starts its own grace
    assert cu.due(T0 + GRACE + EPS) == {}
    assert cu.due(T0 + 2 * GRACE + 2 * EPS) == {2: {2: 2}}


def test_eager_skips_the_grace():
    cu, _, peers = make({})
    add_peer(peers, 3, {2: 4, 3: 1})
    assert cu.due(T0, eager=True) == {3: {2: 0, 3: 0}}


def test_one_pull_per_peer_until_answered_forgotten_or_timed_out():
    cu, _, peers = make({})
    add_peer(peers, 2, {2: 4})
    add_peer(peers, 3, {3: 4})
    assert cu.due(T0, eager=True) == {2: {2: 0}, 3: {3: 0}}
    assert cu.due(T0 + 0.1, eager=True) == {}                       # both outstanding
    cu.answered(2, more=False, now=T0 + 0.2)
    assert cu.due(T0 + 0.3, eager=True) == {2: {2: 0}}              # 2 answered; 3 still out
    cu.forget(3)
    assert cu.due(T0 + 0.4, eager=True) == {3: {3: 0}}              # 3 gone and back
    cu.answered(3, more=True, now=T0 + 0.5)           # goes on: the server re-sends at once
    assert cu.due(T0 + 0.6, eager=True) == {}
    assert cu.due(T0 + 0.3 + FETCH_TIMEOUT, eager=True) == {2: {2: 0}}   # unanswered: again
    assert cu.due(T0 + 0.4 + FETCH_TIMEOUT + EPS, eager=True) == {}     # 3's re-sent pull
    assert cu.due(T0 + 0.5 + FETCH_TIMEOUT, eager=True) == {3: {3: 0}}   # ...times out later


def test_the_origin_is_preferred_when_it_is_live_and_ahead():
    cu, _, peers = make({2: 1})
    add_peer(peers, 3, {2: 4})
    add_peer(peers, 2, {2: 4})
    add_peer(peers, 4, {2: 4})
    assert cu.due(T0, eager=True) == {2: {2: 1}}


def test_the_most_holding_live_peer_stands_in_for_a_dead_origin():
    cu, _, peers = make({2: 1})
    add_peer(peers, 2, {2: 9}, alive=False)
    add_peer(peers, 3, {2: 3})
    add_peer(peers, 4, {2: 6})
    add_peer(peers, 5, {2: 9}, phase=GONE)
    add_peer(peers, 6, {2: 9}, phase=LEAVING)
    assert cu.due(T0, eager=True) == {4: {2: 1}}


def test_the_choice_of_peer_does_not_depend_on_the_order_peers_were_seen():
    """My view of origin 2 is stale (its last EVENT to me was dropped, so its vv says
    5), server 3's BEAT says it holds 6 of origin 2. Origin 2 is live and ahead of me."""
    choices = []
    for order in ((2, 3), (3, 2)):
        cu, _, peers = make({2: 4})
        for pid in order:
            add_peer(peers, pid, {2: 5} if pid == 2 else {2: 6})
        choices.append(cu.due(T0, eager=True))
    assert choices[0] == choices[1] == {2: {2: 4}}


# --- any peer table: hypothesis ----------------------------------------------------------
ORIGINS = st.integers(1, 5)
VV = st.dictionaries(ORIGINS, st.integers(0, 6), max_size=5)
PEER = st.tuples(st.sampled_from([JOINING, SYNCING, SERVING, LEAVING, GONE]), st.booleans(), VV)
TABLE = st.dictionaries(st.integers(2, 6), PEER, max_size=5)


def build(mine, table, order) -> tuple[CatchUp, SocialState, Peers]:
    cu, state, peers = make(mine)
    for pid in order:
        phase, alive, vv = table[pid]
        add_peer(peers, pid, vv, phase, alive)
    return cu, state, peers


def lagging(mine, table) -> dict[int, list[int]]:
    """Reference: origin -> the live peers holding more of it than I do."""
    out: dict[int, list[int]] = {}
    for pid, (phase, alive, vv) in table.items():
        if alive and phase not in (GONE, LEAVING):
            for origin, seq in vv.items():
                if seq > mine.get(origin, 0):
                    out.setdefault(origin, []).append(pid)
    return out


@settings(max_examples=300, deadline=None)
@given(VV, TABLE, st.randoms(use_true_random=False))
def test_due_pulls_every_lagging_origin_once_from_a_live_peer_ahead(mine, table, rnd):
    order = list(table)
    rnd.shuffle(order)
    cu, state, peers = build(mine, table, order)
    lag = lagging(mine, table)
    got = pulled(cu.due(T0, eager=True))
    assert set(got) == set(lag)                                  # each lagging origin, once
    for origin, (peer, after) in got.items():
        assert peer in lag[origin]                               # live, and ahead of me
        assert after == state.seq_of(origin)                     # nothing I already have
        best = max(table[p][2].get(origin, 0) for p in lag[origin])
        if origin in lag[origin] and table[origin][2][origin] == best:
            assert peer == origin                                # the origin, when it can


@settings(max_examples=200, deadline=None)
@given(VV, TABLE, st.randoms(use_true_random=False), st.floats(0.0, 0.99), st.booleans())
def test_a_peer_has_at_most_one_pull_outstanding(mine, table, rnd, frac, by_answer):
    order = list(table)
    rnd.shuffle(order)
    cu, _, _ = build(mine, table, order)
    first = cu.due(T0, eager=True)
    later = T0 + frac * FETCH_TIMEOUT                 # before any pull timed out
    assert cu.due(later, eager=True) == {}
    if first:
        peer = rnd.choice(sorted(first))
        if by_answer:
            cu.answered(peer, more=False, now=later)
        else:
            cu.forget(peer)                           # the peer went
        assert cu.due(later, eager=True) == {peer: first[peer]}   # only the one released
        assert cu.due(later, eager=True) == {}
    again = cu.due(T0 + 2 * FETCH_TIMEOUT, eager=True)           # every pull timed out
    assert again == first


@settings(max_examples=200, deadline=None)
@given(VV, TABLE, st.sets(ORIGINS), st.floats(0.0, 0.999))
def test_gap_grace_holds_back_all_but_certain_gaps(mine, table, gap_origins, frac):
    cu, state, _ = build(mine, table, list(table))
    lag = lagging(mine, table)
    for origin in gap_origins:            # an event two beyond what I hold came early
        cu.park(ev(origin, state.seq_of(origin) + 2))
    certain = gap_origins & set(lag)
    first = cu.due(T0)
    assert set(pulled(first)) == certain
    assert cu.due(T0 + frac * GRACE) == {}            # the rest within their grace
    choice = cu.ahead(state.vv(), T0)
    rest = cu.due(T0 + GRACE + EPS)                   # the grace is over: all but the
    assert set(pulled(rest)) == {o for o in lag if choice[o] not in first}  # outstanding
    assert set(pulled(cu.due(T0 + 2 * FETCH_TIMEOUT))) == set(lag)


# --- joining: target, unreachable, caught up ---------------------------------------------
def test_target_is_the_most_any_live_peer_or_i_hold():
    cu, _, peers = make({1: 3, 2: 1})
    add_peer(peers, 2, {2: 5, 3: 2}, JOINING)
    add_peer(peers, 3, {2: 4, 3: 7})
    add_peer(peers, 4, {3: 50}, alive=False)
    add_peer(peers, 5, {3: 60}, GONE)
    assert cu.target(T0) == {1: 3, 2: 5, 3: 7}


def test_lower_unreachable_drops_only_the_tail_no_live_peer_holds():
    cu, state, peers = make({2: 1})
    add_peer(peers, 2, {2: 5})
    add_peer(peers, 3, {2: 3, 3: 4})
    target = cu.target(T0)
    assert target == {2: 5, 3: 4} and not cu.caught_up(target)
    peers.left(2)                                     # BYE: 2's tail is out of reach
    cu.lower_unreachable(target, T0)
    assert target == {2: 3, 3: 4}
    peers.left(3)
    cu.lower_unreachable(target, T0)
    assert target == {2: 1, 3: 0}                     # only what I hold is left
    assert cu.caught_up(target)


def test_caught_up_means_holding_the_whole_target():
    cu, state, _ = make({2: 2})
    assert cu.caught_up({})
    assert cu.caught_up({2: 2, 3: 0})
    assert not cu.caught_up({2: 3})
    state.apply(ev(2, 3))
    assert cu.caught_up({2: 3})


@settings(max_examples=200, deadline=None)
@given(VV, TABLE, st.sets(st.integers(2, 6)))
def test_target_and_lower_unreachable_against_a_model(mine, table, leave):
    cu, state, peers = build(mine, table, list(table))
    live = lambda: [vv for pid, (ph, al, vv) in table.items()    # noqa: E731
                    if al and ph not in (GONE, LEAVING) and pid not in left]
    left: set[int] = set()
    target = cu.target(T0)
    origins = set(mine) | {o for vv in live() for o in vv}
    model = {o: max([mine.get(o, 0)] + [vv.get(o, 0) for vv in live()]) for o in origins}
    assert {o: s for o, s in target.items() if s} == {o: s for o, s in model.items() if s}
    assert cu.caught_up(target) == all(mine.get(o, 0) >= s for o, s in target.items())
    before = dict(target)
    for pid in leave:
        peers.left(pid)
        left.add(pid)
    cu.lower_unreachable(target, T0)
    assert set(target) == set(before)
    for o, seq in target.items():
        assert seq == min(before[o], max([mine.get(o, 0)] + [vv.get(o, 0) for vv in live()]))
    if not live():
        assert cu.caught_up(target)                   # alone: nothing left to wait for
