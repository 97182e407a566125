"""Anti-entropy without sockets: which copy stands (``choose``), a replaced copy in
the state, the fingerprint check on an origin's acks, and whole repairs between
in-memory servers whose questions are answered by each other's ``Repair``."""
from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import protocol as P
from servers.peers import SERVING, Peer, Peers
from servers.repair import Repair, block_size, choose
from servers.state import SocialState, fingerprint
from tests.test_state_properties import USERS, _answers, histories

pytestmark = pytest.mark.timeout(60)

T0 = 1000.0


def post(origin: int, seq: int, text: str | None = None, rid: str | None = None) -> P.Event:
    return P.Event(id=rid or f"o{origin}s{seq}", kind=P.EV_POST, user="alice", lamport=seq,
                   ts=1.7e9, origin=origin, seq=seq,
                   data=P.EventData(text=text or f"t{origin}.{seq}"))


def other_text(event: P.Event, text: str = "forged") -> P.Event:
    return msgspec.structs.replace(event, data=msgspec.structs.replace(event.data, text=text))


# --- choose ----------------------------------------------------------------------------------
copy_sets = st.dictionaries(st.integers(1, 7), st.sampled_from(["a", "b", "c"]),
                            min_size=1, max_size=7)


@settings(max_examples=300, deadline=None)
@given(copy_sets, st.integers(1, 7), st.randoms())
def test_choose_keeps_the_origins_copy_else_the_majority_and_ignores_order(texts, origin, rnd):
    copies = {server: post(origin, 5, text) for server, text in texts.items()}
    winner, holders = choose(origin, copies)
    assert winner in copies.values()
    assert holders == sorted(s for s, e in copies.items() if e == winner)
    if origin in copies:
        assert winner == copies[origin]
    else:
        counts = {t: list(texts.values()).count(t) for t in set(texts.values())}
        assert counts[winner.data.text] == max(counts.values())
    shuffled = list(copies.items())
    rnd.shuffle(shuffled)
    assert choose(origin, dict(shuffled)) == (winner, holders)


def test_choose_breaks_a_tie_the_same_way_everywhere():
    a, b = post(9, 1, "a"), post(9, 1, "b")
    assert choose(9, {1: a, 2: b})[0] == choose(9, {2: b, 1: a})[0] == a


# --- state.replace -----------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(histories(), st.data())
def test_replacing_copies_gives_the_state_of_the_final_copies_applied_fresh(events, data):
    """Whatever copies are replaced (duplicated request ids among them), every view,
    the digest and every fingerprint are those of a state built from the result."""
    state = SocialState()
    for e in events:
        state.apply(e)
    final = list(events)
    for i in data.draw(st.lists(st.integers(0, len(events) - 1), max_size=6)):
        old = final[i]
        new_id = data.draw(st.sampled_from([old.id] + [e.id for e in events]))
        try:
            new = msgspec.structs.replace(old, id=new_id, lamport=data.draw(st.integers(1, 40)),
                                          user=data.draw(st.sampled_from(USERS)))
        except ValueError:              # an event naming its own author: not an event
            continue
        final[i] = new
        assert state.replace(new) == old
    fresh = SocialState()
    for e in final:
        fresh.apply(e)
    assert _answers(state) == _answers(fresh)
    assert state.sums() == fresh.sums()
    for origin in (1, 2, 3):
        mine = [e for e in final if e.origin == origin]
        for n in range(len(mine) + 1):
            assert state.sum_at(origin, n) == fingerprint(mine[:n])


def test_block_sums_and_copies_say_none_beyond_what_is_held():
    state = SocialState()
    for seq in range(1, 11):
        state.apply(post(1, seq))
    assert state.block_sums(1, 0, 10, 4) == [
        fingerprint([post(1, s) for s in range(lo + 1, min(lo + 4, 10) + 1)]) for lo in (0, 4, 8)]
    assert state.block_sums(1, 0, 11, 4) is None and state.copies(1, 5, 11) is None
    assert state.copies(1, 5, 7) == [post(1, 6), post(1, 7)]


# --- the origin counts only true copies ---------------------------------------------------------
def test_an_origin_counts_a_peers_claim_only_when_its_fingerprint_is_the_origins():
    state = SocialState()
    for seq in (1, 2):
        state.apply(post(1, seq))
    peers = Peers(1, 1.0, vouch=lambda seq, fp: fp == state.sum_at(1, seq))
    peers.table[2] = Peer(2, T0 + 10, SERVING)
    forged = [post(1, 1), other_text(post(1, 2))]
    peers.update_vv(2, {1: 2}, {1: fingerprint(forged)})
    assert peers.table[2].vv.get(1, 0) == 0 and peers.take_disputed() == {2: 2}
    peers.update_vv(2, {1: 1}, {1: fingerprint(forged[:1])})      # the true part counts
    assert peers.table[2].vv[1] == 1
    peers.update_vv(2, {1: 3}, {1: 0})                          # more than I ever numbered
    assert peers.table[2].vv[1] == 1 and peers.take_disputed() == {2: 3}
    peers.update_vv(2, {1: 2, 3: 9}, {1: state.sum_at(1, 2)})   # others' events: not mine to check
    assert peers.table[2].vv == {1: 2, 3: 9} and peers.take_disputed() == {}


# --- whole repairs between in-memory servers ------------------------------------------------------
class Net:
    """Servers whose Repair roles talk through ``send``: a question is answered at
    once by the peer's role unless the peer is ``mute``; answers are queued and
    delivered by ``run``."""

    def __init__(self, logs: dict[int, list[P.Event]]) -> None:
        self.states: dict[int, SocialState] = {}
        self.repairs: dict[int, Repair] = {}
        self.queue: list[tuple[int, object]] = []
        self.mute: set[int] = set()
        self.sent: list[tuple[int, int, str]] = []
        for sid, events in logs.items():
            state = self.states[sid] = SocialState()
            for e in events:
                state.apply(e)
        for sid in logs:
            peers = Peers(sid, 1.0)
            for other in logs:
                if other != sid:
                    peers.table[other] = Peer(other, T0 + 100, SERVING, self.states[other].vv())
            self.repairs[sid] = Repair(
                sid, self.states[sid], peers, None,
                send=lambda to, msg, me=sid: self.ask(me, to, msg),
                replace=self.states[sid].replace, timeout=1.0, cooldown=5.0)

    def ask(self, me: int, to: int, msg) -> None:
        self.sent.append((me, to, msg.TYPE))
        if to in self.mute:
            return
        repair = self.repairs[to]
        answer = repair.answer_COMPARE(msg) if isinstance(msg, P.Compare) else repair.answer_RANGE(msg)
        self.queue.append((me, answer))

    def run(self) -> None:
        while self.queue:
            me, answer = self.queue.pop(0)
            handler = self.repairs[me].on_SUMS if isinstance(answer, P.Sums) else self.repairs[me].on_COPIES
            handler(answer, T0)


def logs_of(n: int, origin: int = 1) -> list[P.Event]:
    return [post(origin, s) for s in range(1, n + 1)]


def test_a_forged_copy_is_replaced_by_the_origins_and_the_origin_keeps_its_own():
    true = logs_of(5)
    forged = true[:3] + [other_text(true[3])] + true[4:]
    net = Net({1: true, 2: forged, 3: forged})      # the forgery holds a majority
    net.repairs[2].suspect(1, "test", T0)
    net.repairs[1].suspect(1, "test", T0)
    net.run()
    assert net.states[2].copy_at(1, 4) == true[3] and net.repairs[2].repaired == 1
    assert net.states[1].copy_at(1, 4) == true[3] and net.repairs[1].repaired == 0
    assert not [s for s in net.sent if s[0] == 1], "the origin asked about its own events"
    assert net.states[2].sums() == net.states[1].sums()


def test_without_the_origin_the_majority_copy_stands():
    true = logs_of(5, origin=4)
    bad = true[:1] + [other_text(true[1])] + true[2:]
    net = Net({1: true, 2: true, 3: bad})            # origin 4 is not among them
    net.repairs[3].suspect(4, "test", T0)
    net.repairs[1].suspect(4, "test", T0)
    net.run()
    assert net.states[3].copy_at(4, 2) == true[1] and net.repairs[3].repaired == 1
    assert net.repairs[1].repaired == 0


def test_a_large_log_is_narrowed_by_block_fingerprints_to_the_one_block_that_differs():
    n = 5 * P.RANGE_MAX + 17
    true = logs_of(n, origin=2)
    bad = list(true)
    bad[3 * P.RANGE_MAX + 5] = other_text(true[3 * P.RANGE_MAX + 5])
    net = Net({1: bad, 2: true, 3: true})
    net.repairs[1].suspect(2, "test", T0)
    net.run()
    assert net.states[1].sums() == net.states[2].sums() and net.repairs[1].repaired == 1
    ranges = [s for s in net.sent if s[0] == 1 and s[2] == "RANGE"]
    assert len(ranges) == 2, "one differing block, asked of each of the two peers"


def test_a_peer_that_does_not_answer_is_left_out_when_the_step_times_out():
    true = logs_of(5, origin=2)
    bad = true[:4] + [other_text(true[4])]
    net = Net({1: bad, 2: true, 3: true})
    net.mute = {3}
    net.repairs[1].suspect(2, "test", T0)
    net.run()
    assert net.repairs[1].repaired == 0 and net.repairs[1].sessions
    net.repairs[1].tick(T0 + 1.5)          # the step's deadline: go on with server 2's answer
    net.run()
    assert net.states[1].copy_at(2, 5) == true[4] and not net.repairs[1].sessions


def test_a_repair_waits_out_its_cooldown_and_needs_peers_holding_as_much():
    net = Net({1: logs_of(3, origin=2), 2: logs_of(3, origin=2)})
    net.repairs[1].suspect(2, "test", T0)
    net.run()
    asked = len(net.sent)
    net.repairs[1].suspect(2, "again", T0 + 1)           # within the cooldown
    assert len(net.sent) == asked
    net.states[1].apply(post(2, 4))                       # I now hold more than any peer
    net.repairs[1].suspect(2, "later", T0 + 10)
    assert len(net.sent) == asked


def test_a_beat_with_equal_seqs_and_another_fingerprint_starts_a_repair():
    true = logs_of(3, origin=2)
    net = Net({1: true[:2] + [other_text(true[2])], 2: true})
    beat = P.Beat(sender=2, phase=SERVING, vv={2: 3}, epoch=1, coordinator=2,
                  sums=net.states[2].sums())
    net.repairs[1].on_BEAT(beat, T0)
    net.run()
    assert net.states[1].sums() == net.states[2].sums()
    same = P.Beat(sender=2, phase=SERVING, vv={2: 3}, epoch=1, coordinator=2,
                  sums=net.states[2].sums())
    before = len(net.sent)
    net.repairs[1].on_BEAT(same, T0 + 10)
    assert len(net.sent) == before


@pytest.mark.parametrize("lo,hi", [(0, 1), (0, 999), (0, 4_096_000), (0, 10 ** 9), (7, 5007)])
def test_a_compare_never_asks_for_more_blocks_than_an_answer_holds(lo, hi):
    block = block_size(lo, hi)
    P.Compare(sender=1, origin=2, lo=lo, hi=hi, block=block)      # valid: at most MAX_SUMS
    assert -(-(hi - lo) // block) <= P.MAX_SUMS


def test_copies_that_are_not_the_range_asked_for_are_not_used():
    true = logs_of(4, origin=2)
    net = Net({1: true[:3] + [other_text(true[3])], 2: true})
    repair = net.repairs[1]
    repair.suspect(2, "test", T0)
    _, answer = net.queue.pop(0)
    wrong = msgspec.structs.replace(answer, events=list(itertools.islice(
        (post(3, s) for s in range(1, 5)), 4)))
    repair.on_COPIES(wrong, T0)
    assert net.states[1].copy_at(2, 4) != true[3] and not repair.sessions
