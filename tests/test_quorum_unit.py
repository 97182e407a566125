"""The quorum rules, without sockets: membership, removal by a majority, the
copies an ack needs, and whether a server reaches a majority.

``Quorum`` is pure logic driven with a fake monotonic clock; the property tests
build clusters of 1-7 servers cut into a side that hears itself and a silent rest,
and check what each server may do on its side.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import protocol as P
from servers.quorum import Quorum, majority
from servers.replication import copies_required
from tests.fakes import NoteLog

pytestmark = pytest.mark.timeout(60)

WINDOW = 1.5
T0 = 1000.0


def quorum(me: int, members, saved: list | None = None) -> Quorum:
    return Quorum(me, WINDOW, members=members, log=NoteLog(),
                  save=(saved.append if saved is not None else None))


def side(ids: set[int], members: set[int], now: float) -> dict[int, Quorum]:
    """Every server of ``ids`` knows ``members`` and has just heard (and heard the
    views of) exactly the others of ``ids``: the rest are silent to it."""
    qs = {}
    for me in ids:
        q = quorum(me, members)
        q.learned()
        for other in ids - {me}:
            q.on_view(other, True, members, sorted(ids), now)
        qs[me] = q
    return qs


# --- the rules, one by one -----------------------------------------------------------
def test_majority_is_more_than_half():
    assert [majority(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]


def test_a_lone_server_of_three_is_short_and_says_how_short():
    q = quorum(1, {1, 2, 3})
    assert q.majority() == 2 and q.reachable(T0) == 1
    assert q.short_of_majority(T0) == "1 of 3 servers reachable"
    q.heard_from(2, T0)
    assert q.short_of_majority(T0) is None
    assert q.short_of_majority(T0 + WINDOW) == "1 of 3 servers reachable"   # 2 fell silent


def test_a_silent_member_goes_only_when_a_majority_agrees():
    q = quorum(1, {1, 2, 3})
    q.learned()
    q.on_view(2, True, [1, 2, 3], [1, 2, 3], T0)        # 2 still hears 3
    q.heard_from(3, T0 - 10)
    assert q.sweep(T0 + 0.1) == [] and q.members == {1, 2, 3}
    q.on_view(2, True, [1, 2, 3], [1, 2], T0 + 0.2)     # now 2 does not hear 3 either
    assert q.sweep(T0 + 0.3) == [3] and q.members == {1, 2}
    assert q.majority() == 2


def test_i_keep_a_member_i_hear_whatever_the_others_say():
    q = quorum(1, {1, 2, 3})
    q.on_view(2, True, [1, 2, 3], [1, 2], T0)
    q.heard_from(3, T0)
    assert q.sweep(T0 + 0.1) == []


def test_a_view_i_cannot_hear_anymore_is_no_vote():
    q = quorum(1, {1, 2, 3})
    q.on_view(2, True, [1, 2, 3], [1, 2], T0)           # 2 said it does not hear 3 ...
    assert q.sweep(T0 + WINDOW + 0.1) == []             # ... but 2 is itself silent now


def test_bye_removes_at_once_and_a_leaving_beat_does_not_bring_it_back():
    saved: list = []
    q = quorum(1, {1, 2, 3}, saved)
    q.left(3)
    assert q.members == {1, 2} and saved[-1] == [1, 2]
    q.on_view(3, False, [1, 2, 3], [1, 2, 3], T0)       # its BEAT while it leaves
    assert q.members == {1, 2}
    q.on_view(3, True, [1, 2, 3], [3], T0 + 5)          # it restarted: joining
    assert q.members == {1, 2, 3} and saved[-1] == [1, 2, 3]


def test_a_joining_server_learns_the_members_its_peers_name_then_stops_learning():
    q = quorum(4, set())
    q.on_view(1, True, [1, 2, 3], [1, 2, 3], T0)
    assert q.members == {1, 2, 3, 4} and q.majority() == 3
    q.learned()
    q.on_view(1, True, [1, 2, 3, 9], [1, 2, 3], T0)     # 9 is no member on 1's word alone
    assert 9 not in q.members


def test_my_own_removal_is_never_mine_to_make():
    q = quorum(1, {1, 2, 3})
    q.on_view(2, True, [1, 2, 3], [2], T0)
    q.on_view(3, True, [1, 2, 3], [3], T0)
    q.left(1)
    assert q.sweep(T0) == [] and 1 in q.members


def test_hears_is_what_my_beat_says():
    q = quorum(2, {1, 2, 3})
    q.heard_from(3, T0)
    assert q.hears(T0 + 0.5) == [2, 3]
    assert q.hears(T0 + WINDOW) == [2]


def test_a_shorter_window_is_stricter():
    q = quorum(1, {1, 2, 3})
    q.heard_from(2, T0)
    assert q.has_majority(T0 + 1.0) and not q.has_majority(T0 + 1.0, window=0.9)


# --- properties ------------------------------------------------------------------------
CUTS = st.integers(1, 7).flatmap(
    lambda n: st.tuples(st.just(n), st.sets(st.integers(1, n), min_size=1)))


@settings(max_examples=200, deadline=None)
@given(CUTS, st.integers(1, 4))
def test_a_minority_never_shrinks_the_membership_and_a_majority_removes_the_silent(cut, rounds):
    n, hearing = cut
    members = set(range(1, n + 1))
    qs = side(hearing, members, T0)
    for r in range(rounds):                             # sweeps, later and later
        now = T0 + WINDOW + r * 0.5
        for me, q in qs.items():
            for other in hearing - {me}:                # they keep hearing each other
                q.on_view(other, True, sorted(q.members), sorted(hearing), now - 0.1)
            q.sweep(now)
    for q in qs.values():
        if len(hearing) < majority(n):
            assert q.members == members, "a minority removed members"
            assert q.short_of_majority(T0 + WINDOW) is not None
        else:
            assert q.members == hearing, "the majority side kept a silent member"
            assert q.short_of_majority(T0 + WINDOW) is None


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5), st.integers(0, 6), st.integers(1, 7))
def test_an_ack_never_needs_fewer_than_a_majority_nor_more_than_can_hold(replicas, holding, n):
    need = copies_required(replicas, holding, majority(n))
    assert need >= majority(n)
    assert need >= min(replicas, 1 + holding)
    if 1 + holding >= replicas >= majority(n):
        assert need == replicas


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 7), st.data())
def test_two_majorities_of_one_membership_always_share_a_server(n, data):
    members = list(range(1, n + 1))
    a = data.draw(st.sets(st.sampled_from(members), min_size=majority(n)))
    b = data.draw(st.sets(st.sampled_from(members), min_size=majority(n)))
    assert a & b


def test_the_wire_carries_members_and_hears():
    beat = P.Beat(sender=1, phase="serving", vv={}, epoch=0, coordinator=None,
                  members=[1, 2, 3], hears=[1, 2])
    assert P.decode(P.encode(beat, 1), P.BUS).msg == beat


def test_the_member_list_survives_beside_the_folder_and_a_damaged_one_is_refused(tmp_path):
    from servers.members_file import MembersFile
    path = tmp_path / "server-1.members"
    kept = MembersFile(path)
    assert kept.read() == []                          # a new server: learns from its peers
    kept.write([1, 2, 3])
    assert MembersFile(path).read() == [1, 2, 3] and path.read_text() == "1 2 3\n"
    q = Quorum(1, WINDOW, members=MembersFile(path).read(), save=kept.write)
    q.left(3)
    assert MembersFile(path).read() == [1, 2]
    for junk in ("1 2 x\n", "", "0 1\n", "1 100\n"):
        path.write_text(junk)
        with pytest.raises(ValueError,
                           match=r"is damaged .*\(delete it to learn them again from the peers\)"):
            MembersFile(path).read()
