"""Replication: apply in seq order, the outbox, and the quorum rule.

Pure logic: a real ``SocialState``, ``Peers`` and ``CatchUp``, a fake store that
records what was appended, and a fake ``now``. Peer tables are built by hand so
a property can put every peer in any phase, alive or silent, holding anything.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import protocol as P
from common.config import Config
from servers.catchup import CatchUp
from servers.peers import GONE, JOINING, LEAVING, SERVING, SYNCING, Peer, Peers
from servers.replication import Replication, copies_required
from servers.state import SocialState, _insort
from tests.fakes import FakeStore, TalkLog

pytestmark = pytest.mark.timeout(60)

CONFIG = Config().validate()
T0 = 1000.0
ME = 1
PHASES = [JOINING, SYNCING, SERVING, LEAVING, GONE]


def ev(origin: int, seq: int, rid: str | None = None, user: str = "alice",
       lamport: int | None = None) -> P.Event:
    return P.Event(id=rid or f"o{origin}s{seq}", kind=P.EV_POST, user=user,
                   lamport=seq if lamport is None else lamport, ts=1.7e9, origin=origin,
                   seq=seq, data=P.EventData(text=f"t{origin}.{seq}"))


def make(replicas: int = 3, log=None) -> tuple[Replication, SocialState, Peers, FakeStore]:
    state = SocialState()
    peers = Peers(ME, CONFIG.peer_timeout)
    catchup = CatchUp(state, peers, CONFIG.gap_grace, CONFIG.fetch_timeout)
    store = FakeStore()
    return Replication(ME, state, store, peers, catchup, replicas, log), state, peers, store


def add_peer(peers: Peers, pid: int, vv: dict[int, int], phase: str = SERVING,
             alive: bool = True) -> Peer:
    peer = Peer(pid, T0 + 100.0 if alive else T0 - 1.0, phase, dict(vv))
    peers.table[pid] = peer
    return peer


def write(repl: Replication, n: int) -> list[P.Event]:
    """``n`` writes of my own, each waited for by a client."""
    made = []
    for i in range(n):
        event = repl.create(P.EV_POST, "alice", P.EventData(text=f"w{i}"), f"w{i}", i + 1,
                            1.7e9)
        repl.wait(b"client", event.id, event, T0)
        made.append(event)
    return made


# --- copies_required ---------------------------------------------------------------------
def test_copies_required_examples():
    assert copies_required(3, 0) == 1          # alone: my own copy is all there is
    assert copies_required(3, 1) == 2
    assert copies_required(3, 2) == 3
    assert copies_required(3, 7) == 3
    assert copies_required(1, 5) == 1


@given(st.integers(1, 9), st.integers(0, 20), st.integers(0, 20))
def test_copies_required_is_monotone_and_bounded(replicas, a, b):
    lo, hi = sorted((a, b))
    assert 1 <= copies_required(replicas, lo) <= copies_required(replicas, hi) <= replicas
    assert copies_required(replicas, hi) == min(replicas, 1 + hi)
    assert copies_required(replicas, lo) <= copies_required(replicas + 1, lo)


# --- the quorum rule over any peer table -------------------------------------------------
PEER = st.tuples(st.sampled_from(PHASES), st.booleans(), st.integers(0, 8))
TABLE = st.dictionaries(st.integers(2, 8), PEER, max_size=7)


def model_live(table):
    return {pid: spec for pid, spec in table.items()
            if spec[1] and spec[0] not in (GONE, LEAVING)}


def model_holders(table, seq: int, mine: int) -> int:
    return (mine >= seq) + sum(1 for _, _, held in model_live(table).values() if held >= seq)


def model_required(table, replicas: int) -> int:
    holding = [p for p, (phase, _, _) in model_live(table).items() if phase in (SERVING, SYNCING)]
    return min(replicas, 1 + len(holding))


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 5), st.integers(1, 8), TABLE)
def test_ready_answers_exactly_the_waiters_with_enough_holders(replicas, n, table):
    repl, state, peers, _ = make(replicas)
    write(repl, n)
    for pid, (phase, alive, held) in table.items():
        add_peer(peers, pid, {ME: held, 9: 3}, phase, alive)
    need = model_required(table, replicas)
    assert repl.required(T0) == need
    done = repl.ready(T0)
    answered = {w.seq: count for w, count in done}
    for seq in range(1, n + 1):
        holders = model_holders(table, seq, n)
        assert repl.holders(ME, seq, T0) == holders
        if seq in answered:
            assert answered[seq] == holders >= need
            assert holders >= min(replicas, 1 + len([p for p in model_live(table).values()
                                                     if p[0] in (SERVING, SYNCING)]))
        else:
            assert holders < need
    assert len(answered) == len(done)                       # each once
    assert sorted(w.seq for w in repl.waiters) == sorted(set(range(1, n + 1)) - set(answered))
    assert repl.ready(T0) == []                             # nothing changed: nothing new


STEP = st.one_of(
    st.tuples(st.just("ack"), st.integers(2, 6), st.integers(0, 8)),
    st.tuples(st.just("phase"), st.integers(2, 6), st.sampled_from(PHASES)),
    st.tuples(st.just("bye"), st.integers(2, 6), st.just(0)),
    st.tuples(st.just("silent"), st.integers(2, 6), st.just(0)),
    st.tuples(st.just("retry"), st.integers(1, 6), st.just(0)))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.lists(STEP, max_size=25))
def test_a_wait_is_answered_once_however_the_cluster_changes(replicas, n, steps):
    repl, state, peers, _ = make(replicas)
    made = write(repl, n)
    for pid in range(2, 7):
        add_peer(peers, pid, {}, SERVING)
    waits = n
    answers: list = []                    # the waiters answered (kept: ids stay unique)
    for action, pid, arg in steps:
        if action == "ack":
            repl.on_ACK(P.Ack(sender=pid, vv={ME: min(arg, n)}), T0)
        elif action == "phase":
            peers.table[pid].phase = arg
        elif action == "bye":
            peers.left(pid)
        elif action == "silent":
            peers.table[pid].expiry = T0 - 1.0
        elif action == "retry" and pid <= n:              # a client asks again
            repl.wait(b"client", made[pid - 1].id, made[pid - 1], T0)
            waits += 1
        need = repl.required(T0)
        for w, count in repl.ready(T0):
            assert count >= need and count == repl.holders(ME, w.seq, T0)
            answers.append(w)
        for w in repl.waiters:
            assert repl.holders(ME, w.seq, T0) < need
    assert len({id(w) for w in answers}) == len(answers)         # no wait answered twice
    assert len(answers) + len(repl.waiters) == waits              # none lost


def test_a_syncing_peer_counts_in_the_quorum_a_joining_one_does_not():
    repl, _, peers, _ = make(3)
    write(repl, 1)
    add_peer(peers, 2, {}, SERVING)
    add_peer(peers, 3, {}, JOINING)
    assert repl.required(T0) == 2
    peers.table[3].phase = SYNCING
    assert repl.required(T0) == 3
    repl.on_ACK(P.Ack(sender=2, vv={ME: 1}), T0)
    assert repl.ready(T0) == []                      # 2 of 3: the syncing one will hold it
    repl.on_ACK(P.Ack(sender=3, vv={ME: 1}), T0)
    [(waiter, count)] = repl.ready(T0)
    assert (waiter.rid, count) == ("w0", 3)


def test_a_lone_server_acks_with_its_own_copy_and_a_silent_peer_does_not_count():
    repl, _, peers, _ = make(3)
    add_peer(peers, 2, {ME: 1}, SERVING, alive=False)
    write(repl, 1)
    [(_, count)] = repl.ready(T0)
    assert count == 1


# --- under_replicated ------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5), st.integers(0, 8), st.lists(PEER, max_size=6))
def test_under_replicated_counts_my_events_held_by_too_few(replicas, mine, specs):
    repl, state, peers, _ = make(replicas)
    for seq in range(1, mine + 1):
        state.apply(ev(ME, seq))
    table = {}
    for pid, (phase, alive, held) in enumerate(specs, start=2):
        held = min(held, mine)                        # nobody holds more of mine than I do
        table[pid] = (phase, alive, held)
        add_peer(peers, pid, {ME: held}, phase, alive)
    expected = sum(1 for seq in range(1, mine + 1) if model_holders(table, seq, mine) < replicas)
    assert repl.under_replicated(T0) == expected


def test_under_replicated_is_never_negative_after_losing_my_folder():
    repl, state, peers, _ = make(3)
    for pid in (2, 3, 4):
        add_peer(peers, pid, {ME: 40}, SERVING)
    for seq in range(1, 6):                           # pulling my own events back
        state.apply(ev(ME, seq))
    assert repl.under_replicated(T0) == 0


def test_a_negative_under_replicated_would_not_pass_the_wire():
    """Why the one above matters: the broker decodes HB with these ranges."""
    status = P.ServerStatus(id=ME, phase="joining", events=5, digest="", lamport=0, vv={ME: 5},
                            coordinator=None, epoch=0, clock_offset_ms=None, clock_skew_ms=0.0,
                            last_sync=None, under_replicated=-35, repl_lag_hist=[], peers=[2])
    with pytest.raises(P.ProtocolError):
        P.validate(P.Heartbeat(id=ME, clock=1.7e9, status=status))


# --- apply order ------------------------------------------------------------------------------
def test_events_apply_in_seq_order_and_early_ones_wait_for_catch_up():
    log = TalkLog()
    repl, state, peers, store = make(3, log)
    add_peer(peers, 2, {})
    repl.on_EVENT(P.EventBatch(sender=2, events=[ev(2, 1)], vv={2: 1}), T0)
    repl.on_EVENT(P.EventBatch(sender=2, events=[ev(2, 3), ev(2, 4)], vv={2: 4}), T0)
    assert state.seq_of(2) == 1
    assert sorted(repl.catchup.early[2]) == [3, 4]
    assert log.has("EVENT post id=o2s3 2:3 by alice") and log.has("(held or early)")
    assert peers.table[2].vv == {2: 4}                # its vector, early events or not
    due = repl.catchup.due(T0)                        # a gap is certain: no grace
    assert due == {2: {2: 1}}
    new = repl.on_EVENTS(P.Events(sender=2, events=[ev(2, 2), ev(2, 3), ev(2, 4)],
                                  vv={2: 4}, more=False), T0)
    assert new == 1                                   # 2 is new; 3 and 4 came from the park
    assert [e.seq for e in state.by_origin[2]] == [1, 2, 3, 4]
    assert [e.seq for e in store.appended] == [1, 2, 3, 4]
    assert repl.catchup.early == {} and repl.catchup.gaps_repaired == 2
    fresh, outbox = repl.take_turn()
    assert [e.seq for e in fresh] == [1, 2, 3, 4] and outbox == []


def test_events_applied_this_turn_are_not_reported_held_until_the_turn_made_them_durable():
    """A FETCH answered mid-turn carries my vector to a peer that may be their origin,
    counting copies: events still in the log's buffer must not count (a kill then
    would lose a copy the origin acked with)."""
    repl, state, _peers, store = make()
    for seq in (1, 2):
        repl.receive(ev(2, seq))
    repl.take_turn()
    store.sync()                                         # the end of a turn
    for seq in (3, 4):
        repl.receive(ev(2, seq))
    repl.receive(ev(3, 1))
    mine = write(repl, 1)[0]
    assert state.vv() == {2: 4, 3: 1, ME: 1}
    vv, sums = repl.durable_vv()
    assert vv == {2: 2, 3: 0, ME: 0}
    assert sums == {2: state.sum_at(2, 2), 3: 0, ME: 0}
    repl.take_turn()                                     # made durable, then announced
    assert repl.durable_vv() == (state.vv(), state.sums()) and mine.seq == 1


def test_duplicates_are_ignored_and_vectors_only_grow():
    repl, state, peers, store = make()
    add_peer(peers, 2, {})
    batch = P.EventBatch(sender=2, events=[ev(2, 1), ev(2, 2)], vv={2: 2})
    repl.on_EVENT(batch, T0)
    repl.on_EVENT(batch, T0)
    assert not repl.receive(ev(2, 1))
    repl.on_ACK(P.Ack(sender=2, vv={2: 1, 3: 4}), T0)          # a stale ACK, overtaken
    assert peers.table[2].vv == {2: 2, 3: 4}
    assert len(store.appended) == 2 and state.count == 2


def test_my_writes_go_to_the_outbox_with_consecutive_seqs():
    repl, state, _, store = make()
    made = write(repl, 3)
    assert [(e.origin, e.seq) for e in made] == [(ME, 1), (ME, 2), (ME, 3)]
    assert repl.event("w1") == made[1] and repl.event("nope") is None
    fresh, outbox = repl.take_turn()
    assert outbox == made and fresh == made and store.appended == made
    assert repl.take_turn() == ([], [])


def test_load_applies_each_origins_contiguous_prefix_in_any_order():
    repl, state, _, store = make()
    events = [ev(2, 3), ev(1, 2), ev(2, 1), ev(1, 1), ev(2, 2), ev(3, 2)]   # 3:1 lost
    assert repl.load(events) == 5
    assert state.vv() == {1: 2, 2: 3}
    assert store.appended == []                      # already on disk


ORIGIN_LOG = st.integers(0, 6)


@st.composite
def deliveries(draw):
    """Each peer origin's log, and an arbitrary schedule of bus batches (contiguous,
    as the origin publishes them, any of them lost or repeated) and pull answers
    (any events, any order, duplicates)."""
    sizes = {o: draw(ORIGIN_LOG) for o in (2, 3, 4)}
    shared = draw(st.booleans())          # a retried request that made an event on two origins
    logs = {}
    for o, n in sizes.items():
        logs[o] = [ev(o, s, rid=f"r{s}" if shared and s <= 2 else None,
                      lamport=draw(st.integers(1, 20))) for s in range(1, n + 1)]
    every = [e for log in logs.values() for e in log]
    steps = []
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.booleans()):
            o = draw(st.sampled_from(sorted(logs)))
            if logs[o]:
                start = draw(st.integers(0, len(logs[o]) - 1))
                end = draw(st.integers(start + 1, len(logs[o])))
                steps.append(("bus", o, logs[o][start:end]))
        elif every:
            picked = draw(st.lists(st.sampled_from(every), max_size=8))
            steps.append(("fetch", draw(st.integers(2, 4)), picked))
    return logs, steps


def in_order_digest(logs) -> tuple[str, int]:
    state = SocialState()
    for log in logs.values():
        for event in log:
            state.apply(event)
    return state.digest(), state.count


def check_prefixes(repl: Replication, state: SocialState, store: FakeStore, logs) -> None:
    for o, log in logs.items():
        held = state.by_origin.get(o, [])
        assert held == log[:len(held)]                          # a prefix, in seq order
        assert [e for e in store.appended if e.origin == o] == held
        for seq in repl.catchup.early.get(o, {}):
            assert seq > len(held) + 1                          # only truly early ones wait


@settings(max_examples=300, deadline=None)
@given(deliveries(), st.integers(1, 4))
def test_any_delivery_order_ends_in_seq_order_with_the_in_order_digest(plan, batch):
    logs, steps = plan
    repl, state, peers, store = make()
    for o in logs:
        add_peer(peers, o, {})
    for kind, sender, events in steps:
        if kind == "bus":
            repl.on_EVENT(P.EventBatch(sender=sender, events=events,
                                       vv={sender: events[-1].seq}), T0)
        else:
            repl.on_EVENTS(P.Events(sender=sender, events=events, vv={}, more=False), T0)
        check_prefixes(repl, state, store, logs)
    for o, log in logs.items():                 # their BEATs: what each origin holds
        peers.update_vv(o, {o: len(log)}, {})
    now = T0
    for _ in range(50):                         # catch up, as the server's tick does
        due = repl.catchup.due(now, eager=True)
        if not due and repl.catchup.caught_up({o: len(l) for o, l in logs.items()}):
            break
        for peer, after in due.items():
            assert set(after) == {peer}        # each origin holds only its own log
            more = True
            while more:                        # Pulls.on_EVENTS: ask again while it has more
                start = state.seq_of(peer)
                events = logs[peer][start:start + batch]
                more = len(logs[peer]) - start > batch
                repl.on_EVENTS(P.Events(sender=peer, events=events,
                                        vv={peer: len(logs[peer])}, more=more), now)
                repl.catchup.answered(peer, more, now)
                check_prefixes(repl, state, store, logs)
        now += 0.01
    else:
        pytest.fail("catch-up did not finish")
    for o, log in logs.items():
        assert state.by_origin.get(o, []) == log
    assert len(store.appended) == sum(len(log) for log in logs.values())   # each once
    assert repl.catchup.early == {}
    assert (state.digest(), state.count) == in_order_digest(logs)
    fresh, _ = repl.take_turn()
    assert sorted((e.origin, e.seq) for e in fresh) == \
        sorted((e.origin, e.seq) for e in store.appended)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.sampled_from("abc")), max_size=300))
def test_the_sorted_views_stay_sorted_whatever_order_keys_come_in(keys):
    """``_insort``'s shortcuts (append, search the tail) give what a full sort gives."""
    view: list = []
    for key in keys:
        _insort(view, key)
    assert view == sorted(keys)
