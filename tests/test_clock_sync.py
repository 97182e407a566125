"""Issue 4, clocks: Berkeley rounds run by the Bully coordinator, with real processes.

Ground truth is each server's ``clock_skew_ms`` (its clock minus the host clock,
in its status row): every process here shares one host clock, so the spread of
the clocks is max - min of the skews. The logs say what each server did (rounds,
corrections), and the tests tie the two together.

Rounds run every second with a 0.2 s reply window so that the tests are quick.
"""
from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

import pytest

from common.processes import ROOT, wait_until
from tests.harness import Cluster
from tests.sync_probe import (BOUND_MS, Row, StatusProbe, adjustments, log_after, log_sizes,
                              rounds, spread)

REPLY_WINDOW = 0.2
FAST_ROUNDS = {"SOCIAL_BERKELEY_INTERVAL": "1.0",
               "SOCIAL_BERKELEY_REPLY_WINDOW": str(REPLY_WINDOW)}
FIVE_OFFSETS = {1: +1.0, 2: -0.6, 3: +0.3, 4: -1.0, 5: +0.45}
"""Seconds each server's clock starts off, spread over ±1 s."""
CHAOS_SECONDS = float(os.environ.get("SOCIAL_TEST_CHAOS_SECONDS", "30"))
"""How long the chaos test samples (the issue's figures are over a minute: set 60)."""
SAMPLING = threading.Event()
"""Never set: the chaos test waits on it between two samples (a period, not a sync)."""


def start(cluster: Cluster, offsets: dict[int, float], *args: str) -> None:
    """The broker, then each server with its clock ``offsets[id]`` seconds off."""
    cluster.group.start_broker()
    for sid, offset in offsets.items():
        cluster.start_server(sid, "--clock-offset", str(offset), *args)


def full_rounds(cluster: Cluster, ids) -> list:
    """Rounds that read every clock in ``ids``, oldest first (a later coordinator
    has a higher epoch; one coordinator numbers its rounds)."""
    every = [line for sid in ids
             for line in rounds(cluster.log_text(f"server-{sid}"), sid)]
    return sorted((r for r in every if r.readings == set(ids)),
                  key=lambda r: (r.epoch, r.number))


def skews_after(cluster: Cluster, offsets: dict[int, float], last) -> dict[int, float] | None:
    """Each server's skew (ms) right after round ``last``, from its starting offset and
    the corrections it logged up to that round's; None until all have logged it."""
    skews = {}
    for sid, offset in offsets.items():
        total = offset * 1000
        for adj in adjustments(cluster.log_text(f"server-{sid}")):
            total += adj.delta_ms
            if (adj.coordinator, adj.round) == (last.coordinator, last.number):
                skews[sid] = total
                break
        else:
            return None
    return skews


def logged_skew(cluster: Cluster, sid: int, offset: float) -> tuple[float, float | None]:
    """(starting offset + every correction logged, the last correction) in ms."""
    adjs = adjustments(cluster.log_text(f"server-{sid}"))
    return offset * 1000 + sum(a.delta_ms for a in adjs), (adjs[-1].delta_ms if adjs else None)


def rows_match_logs(cluster: Cluster, offsets: dict[int, float], rows: dict) -> bool:
    """Every row reflects its server's last logged correction (none came in between)."""
    for sid, row in rows.items():
        _, last = logged_skew(cluster, sid, offsets[sid])
        if last is None or row["clock_offset_ms"] is None or \
                abs(row["clock_offset_ms"] + last) > 0.002:
            return False
    return True


# --- convergence --------------------------------------------------------------------------
def test_five_clocks_a_second_apart_agree_within_5ms_within_three_rounds(make_cluster):
    cluster = make_cluster(env=FAST_ROUNDS)
    start(cluster, FIVE_OFFSETS)
    cluster.wait_serving(FIVE_OFFSETS, timeout=30)

    def three_rounds_applied():
        done = full_rounds(cluster, FIVE_OFFSETS)[:3]
        return done if len(done) == 3 and skews_after(cluster, FIVE_OFFSETS, done[2]) else None
    three = wait_until(three_rounds_applied, 20, interval=0.1,
                       what="three rounds that read all five clocks, applied by all")
    by_round = [skews_after(cluster, FIVE_OFFSETS, r) for r in three]
    spreads = [spread(s.values()) for s in by_round]
    print(f"\nspread before sync {spread(FIVE_OFFSETS.values()) * 1000:.0f} ms; after "
          f"full rounds 1-3 (from the logged corrections): "
          f"{', '.join(f'{s:.3f}' for s in spreads)} ms")
    assert spreads[2] <= BOUND_MS, f"spread after three rounds: {spreads} ms"

    # the same, against the ground truth: rows that all reflect the last logged round
    probe = StatusProbe(cluster)
    try:
        rows = probe.fresh(FIVE_OFFSETS, 10, what="rows that reflect the last logged round",
                           accept=lambda rows: rows_match_logs(cluster, FIVE_OFFSETS, rows))
    finally:
        probe.close()
    skews = {sid: row["clock_skew_ms"] for sid, row in rows.items()}
    print(f"status skews now (ms): {skews}, spread {spread(skews.values()):.3f} ms")
    assert spread(skews.values()) <= BOUND_MS, skews
    for sid, skew in skews.items():
        logged, _ = logged_skew(cluster, sid, FIVE_OFFSETS[sid])
        assert abs(skew - logged) < 1.0, \
            f"server {sid}: status skew {skew} ms but offset + logged corrections {logged} ms"


# --- chaos --------------------------------------------------------------------------------
JUMP_TOLERANCE_MS = 0.5
"""Between two heartbeats a clock without chaos moves by exactly its correction (the
host clock and the monotonic clock agree to far better than this over 0.1 s)."""
LOOKBACK = REPLY_WINDOW + 0.25
"""A correction is computed from a reading taken up to a reply window before it is
applied; the check for jumps reaches this far back before the row that shows it."""


@dataclass
class Correction:
    """A correction one server applied, seen in the first heartbeat row after it."""
    server: int
    at: float          # host time it was applied: last_sync - skew (exact unless it jumped)
    row: Row
    clean: bool        # no chaos jump from before the round's reading to this row


def corrections_seen(history: dict[int, list[Row]]) -> list[Correction]:
    """Every correction in the sampled rows, each marked clean or not.

    Between two consecutive rows of a server its skew changes by exactly the
    correction applied in between (``-clock_offset_ms``, when ``last_sync`` changed)
    or by nothing; anything else is a chaos jump (or two corrections, if a row was
    missed: counted as a jump too, which can only exclude more)."""
    found = []
    for sid, rows in history.items():
        jumped = [False]
        for a, b in zip(rows, rows[1:]):
            applied = b.data["last_sync"] != a.data["last_sync"]
            expected = -b.data["clock_offset_ms"] if applied else 0.0
            jumped.append(abs(b.skew_ms - a.skew_ms - expected) > JUMP_TOLERANCE_MS)
        for k in range(1, len(rows)):
            b = rows[k]
            if b.data["last_sync"] == rows[k - 1].data["last_sync"]:
                continue
            first = k
            while first > 1 and rows[first - 1].seen > b.seen - LOOKBACK:
                first -= 1
            covered = rows[first - 1].seen <= b.seen - LOOKBACK
            clean = covered and not any(jumped[first:k + 1])
            found.append(Correction(sid, b.data["last_sync"] - b.skew_ms / 1000, b, clean))
    return found


def group_into_rounds(corrections: list[Correction], gap: float = 0.3) -> list[list[Correction]]:
    """Clean corrections applied together (rounds are a second apart; one round's
    corrections land within milliseconds of each other)."""
    clean = sorted((c for c in corrections if c.clean), key=lambda c: c.at)
    groups: list[list[Correction]] = []
    for c in clean:
        if groups and c.at - groups[-1][-1].at <= gap:
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups


class MeasuredRound(NamedTuple):
    spread_ms: float
    corrections: list[Correction]
    logged: object | None          # the coordinator's RoundLine for it, if found


def test_with_chaos_clocks_agree_within_5ms_right_after_each_round(make_cluster):
    """Chaos pushes each clock by up to ±1 s every 2-6 s, so "within 5 ms right after
    each round" can only hold for clocks that did not jump between the round's
    reading and the moment we look: a clock that jumps after its reading gets a
    correction for a time it no longer shows. So every heartbeat row is sampled
    (polls every 40 ms, heartbeats every 100 ms), and a jump shows as a change of
    skew between two consecutive rows that no correction explains. For each round
    we take each server's first row after its correction, drop the servers whose
    clock jumped from before the reading (LOOKBACK) to that row, drop the whole
    round if the coordinator's clock jumped (every correction then carries its jump),
    and require the rest to lie within 5 ms. The exclusion is decided by status
    rows alone, never by the spread it would leave, so it cannot hide a bad sync;
    and the test requires most rounds, and most clocks in them, to be measured."""
    cluster = make_cluster(env=FAST_ROUNDS)
    start(cluster, FIVE_OFFSETS, "--clock-chaos")
    cluster.wait_serving(FIVE_OFFSETS, timeout=30)
    probe = StatusProbe(cluster)
    try:
        coordinator, epoch = probe.settled(FIVE_OFFSETS, 10, coordinator=5)
        marks = log_sizes(cluster, [coordinator])
        probe.history.clear()
        deadline = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < deadline:  # sampling, not synchronizing: every row counts
            probe.poll()
            SAMPLING.wait(0.04)
        final = probe.settled(FIVE_OFFSETS, 10)
    finally:
        probe.close()
    assert final == (coordinator, epoch), "the coordinator changed while sampling"

    ran = rounds(log_after(cluster, coordinator, marks[coordinator]), coordinator)
    corrections = corrections_seen(probe.history)
    measured: list[MeasuredRound] = []
    dropped = 0
    for group in group_into_rounds(corrections):
        servers = {c.server for c in group}
        if coordinator not in servers or len(servers) < 3:
            dropped += 1
            continue
        measured.append(MeasuredRound(spread(c.row.skew_ms for c in group), group,
                                      _logged_round(ran, group)))
    spreads = sorted(m.spread_ms for m in measured)
    worst = max(measured, key=lambda m: m.spread_ms)
    calm = [m.spread_ms for m in measured
            if m.logged is not None and max(m.logged.rtt_ms.values()) <= 10]
    print(f"\nchaos, {CHAOS_SECONDS:.0f} s: {len(ran)} rounds logged, {len(measured)} measured "
          f"({dropped} dropped: coordinator jumped, or < 3 clocks unjumped); "
          f"{sum(not c.clean for c in corrections)} of {len(corrections)} corrections left out "
          f"as jumped.\nspread right after a round: median {statistics.median(spreads):.3f} ms, "
          f"worst {worst.spread_ms:.3f} ms; in the {len(calm)} rounds whose round trips were all "
          f"<= 10 ms: worst {max(calm, default=float('nan')):.3f} ms")
    assert len(measured) >= max(5, len(ran) // 2), "too few rounds could be measured"
    assert sum(len(m.corrections) for m in measured) >= 3.5 * len(measured), \
        "too few clocks per round"
    assert worst.spread_ms <= BOUND_MS, (
        f"spread {worst.spread_ms:.3f} ms right after a round: skews "
        f"{ {c.server: c.row.skew_ms for c in worst.corrections} } ms; the coordinator "
        f"logged:\n{worst.logged.line if worst.logged else '(round not found in its log)'}\n"
        f"largest spreads: {spreads[-5:]}")


def _logged_round(logged: list, group: list[Correction]):
    """The coordinator's log line of the round whose corrections these are."""
    for r in logged:
        sent = r.corrections_ms
        if all(c.server in sent and abs(sent[c.server] + c.row.data["clock_offset_ms"]) <= 0.06
               for c in group):
            return r
    return None


# --- an outlier ------------------------------------------------------------------------------
OUTLIER_MS = 30_000.0
NOT_DRAGGED_MS = 10 * BOUND_MS
"""Had the +30 s clock been averaged in, every other clock would have moved by 6 s (a
fifth of it); sync noise moves them by a few ms. Anything past 50 ms is a drag."""


@pytest.mark.parametrize("outlier", [2, 5], ids=["follower", "highest-id"])
def test_outlier_clock_is_excluded_from_the_average_and_still_corrected(make_cluster, outlier):
    offsets = {sid: 0.0 for sid in range(1, 6)} | {outlier: OUTLIER_MS / 1000}
    cluster = make_cluster(env=FAST_ROUNDS)
    start(cluster, offsets)
    cluster.wait_serving(offsets, timeout=30)

    def excluded_round():
        return next((r for sid in offsets
                     for r in rounds(cluster.log_text(f"server-{sid}"), sid)
                     if outlier in r.excluded), None)
    seen = wait_until(excluded_round, 10, interval=0.1,
                      what=f"a round that leaves s{outlier} out of the average")
    print(f"\nround {seen.number} of s{seen.coordinator} (epoch {seen.epoch}) read "
          f"{sorted(seen.readings)} and excluded {sorted(seen.excluded)}")
    assert seen.excluded == {outlier}

    probe = StatusProbe(cluster)
    try:
        probe.settled(offsets, 10, coordinator=5)
        rows = probe.fresh(offsets, 10)
    finally:
        probe.close()
    skews = {sid: row["clock_skew_ms"] for sid, row in rows.items()}
    moves = {sid: [a.delta_ms for a in adjustments(cluster.log_text(f"server-{sid}"))]
             for sid in offsets}
    print(f"skews now (ms): {skews}; corrections applied (ms): {moves}")
    pulled_in = [m for m in moves[outlier] if abs(m + OUTLIER_MS) <= NOT_DRAGGED_MS]
    assert pulled_in, f"s{outlier} was never corrected by about -30 s: {moves[outlier]}"
    for sid in offsets.keys() - {outlier}:
        assert abs(skews[sid]) <= NOT_DRAGGED_MS and \
            all(abs(m) <= NOT_DRAGGED_MS for m in moves[sid]), f"s{sid} was dragged: {moves[sid]}"
    assert spread(skews.values()) <= BOUND_MS, f"clocks not within the bound: {skews}"


# --- a joining server ----------------------------------------------------------------------
JOIN_OFFSET = 0.8


@pytest.mark.parametrize("running_ids, joiner", [((2, 3, 4), 1), ((1, 2, 3), 4)],
                         ids=["lower-id-follows", "higher-id-takes-over"])
def test_joining_server_clock_is_set_before_it_serves(make_cluster, running_ids, joiner):
    cluster = make_cluster(env=FAST_ROUNDS)
    start_synchronized(cluster, running_ids)
    probe = StatusProbe(cluster)
    try:
        first, others = join(cluster, probe, joiner, running_ids)
    finally:
        probe.close()
    assert_set_before_serving(cluster, joiner, first, others)


def test_higher_id_joining_while_the_coordinator_hangs_is_set_before_it_serves(make_cluster):
    """Nobody can set the joiner's clock before it wins the election: the coordinator
    is frozen and (with a long election timeout, to make the window certain) not yet
    replaced. The joiner becomes coordinator, and its own first round must set its
    clock before it serves."""
    cluster = make_cluster(env=FAST_ROUNDS | {"SOCIAL_ELECTION_TIMEOUT": "30"})
    start_synchronized(cluster, (1, 2, 3))
    probe = StatusProbe(cluster)
    try:
        cluster.group.signal("server-3", signal.SIGSTOP)
        first, others = join(cluster, probe, 4, (1, 2))
    finally:
        probe.close()
    assert_set_before_serving(cluster, 4, first, others)


def start_synchronized(cluster: Cluster, ids) -> None:
    """Servers ``ids``, clocks true, serving under the highest and past a round."""
    start(cluster, {sid: 0.0 for sid in ids})
    cluster.wait_serving(ids, timeout=30)
    probe = StatusProbe(cluster)
    try:
        probe.settled(ids, 10, coordinator=max(ids))
    finally:
        probe.close()
    wait_until(lambda: all(adjustments(cluster.log_text(f"server-{sid}")) for sid in ids),
               10, what="a round applied by every server")


def join(cluster: Cluster, probe: StatusProbe, joiner: int, others) -> tuple[Row, dict]:
    """Start ``joiner`` JOIN_OFFSET s off; its first heartbeat while serving, and
    fresh rows of ``others`` taken after it."""
    cluster.start_server(joiner, "--clock-offset", str(JOIN_OFFSET))
    ready_at = wait_until(lambda: _serving_since(probe, joiner), 30, interval=0.02,
                          what=f"s{joiner} serving")
    first = wait_until(lambda: _first_row_after(probe, joiner, ready_at), 5, interval=0.02,
                       what=f"a heartbeat of s{joiner} while serving")
    return first, probe.fresh(others, 5)


def assert_set_before_serving(cluster: Cluster, joiner: int, first: Row, others: dict) -> None:
    """The joiner's log shows a correction before it started serving, and its first
    heartbeat while serving shows its clock within the bound of the others' (their
    clocks hold still between rounds, and once in sync a round moves them by a few ms
    at most)."""
    log = cluster.log_since_start(f"server-{joiner}")
    served = log.index("| local - | phase syncing -> serving")
    adjusted = log.find("clock adjusted by")
    skews = {joiner: first.skew_ms} | {sid: r["clock_skew_ms"] for sid, r in others.items()}
    print(f"\ns{joiner} joined {JOIN_OFFSET * 1000:.0f} ms off; skews (ms) at its first "
          f"heartbeat while serving: {skews}")
    assert 0 <= adjusted < served, \
        f"s{joiner} started serving before its clock was set:\n" + _lines_around(log, served)
    assert spread(skews.values()) <= BOUND_MS, f"s{joiner} served with skews {skews} ms"


def _serving_since(probe: StatusProbe, sid: int) -> int | None:
    """The Lamport value of the heartbeat before the broker showed ``sid`` serving.

    The broker marks a server serving on its READY, but keeps the fields of its last
    heartbeat: only a later heartbeat shows its clock while it serves."""
    row = probe.poll().get(sid)
    return row["lamport"] if row and row["phase"] == "serving" else None


def _first_row_after(probe: StatusProbe, sid: int, lamport: int) -> Row | None:
    probe.poll()
    return next((r for r in probe.history[sid] if r.data["lamport"] > lamport), None)


def _lines_around(log: str, index: int, lines: int = 6) -> str:
    before = log[:index].splitlines()[-lines:]
    after = log[index:].splitlines()[:lines]
    return "\n".join(before + after)


# --- run_all.py up --clock-chaos --------------------------------------------------------------
def test_run_all_up_with_clock_chaos_makes_the_server_clocks_jump(make_cluster):
    """``up`` passes --clock-chaos on to the servers (in their environment): with all
    clocks started true, only chaos can move a skew past 20 ms."""
    cluster = make_cluster()
    up = subprocess.Popen([sys.executable, "run_all.py", "up", "--servers", "3", "--clock-chaos"],
                          cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
    children: dict[int, str] = {}          # pid -> start time, so a reused pid is never hit
    probe = StatusProbe(cluster)
    try:
        def jumped():
            children.update(_children_of(up.pid))
            rows = probe.poll()
            return [r["clock_skew_ms"] for r in rows.values() if abs(r["clock_skew_ms"]) > 20]
        skews = wait_until(jumped, 30, interval=0.05, what="a server clock pushed by chaos")
        print(f"\nchaos moved clocks to {skews} ms")
        # the broker, 3 servers and the web gateway (issue 14)
        assert len(children) == 5, f"up started {len(children)} processes"
        up.send_signal(signal.SIGINT)
        out, err = up.communicate(timeout=5)
        assert up.returncode == 0, err
        assert "stopped" in out
        wait_until(lambda: not any(_alive(pid, start) for pid, start in children.items()), 3,
                   what="every process of up stopped")
    finally:
        probe.close()
        if up.poll() is None:
            up.kill()
            up.wait(5)
        for pid, start in children.items():     # only what this test's `up` started
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from its third field on (state, ppid, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children_of(pid: int) -> dict[int, str]:
    """The processes whose parent is ``pid``, with their start times."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) and int(fields[1]) == pid:
            found[int(entry)] = fields[19]
    return found


def _alive(pid: int, start: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[19] == start and fields[0] != "Z"
