"""Issue 4, elections: the Bully coordinator with real processes and real signals.

Each server logs "I am coordinator (epoch N)" when it takes over and every
ELECTION / ANSWER / COORDINATOR it sends; its status row says whom it follows, in which
epoch. Signals go only to the pids the harness started.
"""
from __future__ import annotations

import signal
import time

from common.config import Config
from common.processes import wait_until
from tests.harness import Cluster
from tests.sync_probe import (FOLLOW, StatusProbe, adjustments, claimed_epochs, claims,
                              election_messages, log_after, log_sizes)

SHIPPED = Config()
SHIPPED_TIMING = {f"SOCIAL_{name.upper()}": str(getattr(SHIPPED, name))
                  for name in ("heartbeat_interval", "server_timeout", "peer_timeout",
                               "election_timeout", "answer_timeout", "coordinator_wait",
                               "join_clock_wait")}
"""The shipped timing constants (the harness speeds them up): what "within 3 s" is about."""
ELECT_WITHIN = 3.0


def assert_one_claimant_per_epoch(cluster: Cluster, ids) -> dict[int, set[int]]:
    by_epoch = claimed_epochs(cluster, ids)
    shared = {epoch: sids for epoch, sids in by_epoch.items() if len(sids) > 1}
    assert not shared, f"epochs claimed by two servers: {shared}"
    return by_epoch


def wait_claim(cluster: Cluster, sid: int, offset: int, above: int, timeout: float) -> int:
    """The first epoch above ``above`` that ``sid`` claims in its log after ``offset``."""
    def claimed():
        return next((e for e in claims(log_after(cluster, sid, offset)) if e > above), None)
    return wait_until(claimed, timeout, interval=0.02, what=f"s{sid} claiming an epoch > {above}")


def test_killing_the_coordinator_elects_the_highest_live_id_within_3s(make_cluster):
    ids = {1, 2, 3, 4, 5}
    cluster = make_cluster(env=SHIPPED_TIMING)
    cluster.start(5)
    cluster.wait_serving(ids, timeout=30)
    probe = StatusProbe(cluster)
    try:
        _, old_epoch = probe.settled(ids, 10, coordinator=5)
        marks = log_sizes(cluster, ids - {5})
        killed_at = time.monotonic()
        cluster.kill("server-5")
        new_epoch = wait_claim(cluster, 4, marks[4], old_epoch, timeout=15)
        claimed_after = time.monotonic() - killed_at
        settled = probe.settled(ids - {5}, 15, coordinator=4, newer_than=old_epoch)
        agreed_after = time.monotonic() - killed_at
    finally:
        probe.close()

    sent = sum((election_messages(log_after(cluster, sid, marks[sid])) for sid in ids - {5}),
               start=election_messages(""))
    print(f"\nafter SIGKILL of s5 (shipped timing: election_timeout "
          f"{SHIPPED.election_timeout}s, answer_timeout {SHIPPED.answer_timeout}s): s4 claimed "
          f"epoch {new_epoch} after {claimed_after:.2f} s, all four agreed after "
          f"{agreed_after:.2f} s; election messages sent: {sum(sent.values())} {dict(sent)}")
    assert settled == (4, new_epoch)
    assert agreed_after <= ELECT_WITHIN, f"new coordinator agreed on after {agreed_after:.2f} s"
    assert_one_claimant_per_epoch(cluster, ids)


def test_frozen_coordinator_resumes_without_two_coordinators_in_one_epoch(cluster):
    ids = {1, 2, 3, 4}
    cluster.start(4)
    cluster.wait_serving(ids, timeout=30)
    probe = StatusProbe(cluster)
    try:
        _, frozen_epoch = probe.settled(ids, 10, coordinator=4)
        marks = log_sizes(cluster, ids)
        cluster.group.signal("server-4", signal.SIGSTOP)
        stand_in = wait_claim(cluster, 3, marks[3], frozen_epoch, timeout=15)
        probe.settled(ids - {4}, 10, coordinator=3, newer_than=frozen_epoch)
        # let the stand-in act: a round of its own, applied by the others
        wait_until(lambda: all(any(a.coordinator == 3 for a in
                                   adjustments(log_after(cluster, sid, marks[sid])))
                               for sid in (1, 2)), 10, what="a clock round run by s3")
        cluster.group.signal("server-4", signal.SIGCONT)
        resumed_at = time.monotonic()
        final = probe.settled(ids, 15, coordinator=4, newer_than=stand_in)
        took = time.monotonic() - resumed_at
        rows = probe.fresh(ids, 5)
    finally:
        probe.close()

    by_epoch = assert_one_claimant_per_epoch(cluster, ids)
    print(f"\nepochs claimed: { {e: sorted(s) for e, s in sorted(by_epoch.items())} }; "
          f"s4 frozen in {frozen_epoch}, s3 stood in with {stand_in}, s4 took over again "
          f"with {final[1]} {took:.2f} s after SIGCONT")
    # after the resume exactly one coordinator acts, and everyone knows it
    assert {(r["coordinator"], r["epoch"]) for r in rows.values()} == {final}
    assert final[1] > stand_in > frozen_epoch
    resumed_log = log_after(cluster, 4, marks[4])
    assert "stepping down" in resumed_log or f"coordinator is now s3 (epoch {stand_in})" \
        in resumed_log, "s4 never noticed it had been replaced"
    # fencing: while s3 stood in, nobody obeyed the frozen coordinator's clock orders
    for sid in (1, 2):
        assert_no_orders_from_a_deposed_coordinator(log_after(cluster, sid, marks[sid]), sid)


def assert_no_orders_from_a_deposed_coordinator(log: str, sid: int) -> None:
    """Every clock correction ``sid`` applied came from the coordinator it followed."""
    following = None
    for line in log.splitlines():
        if (m := FOLLOW.search(line)) is not None:
            following = int(m.group(1))
        adjusted = adjustments(line)
        if adjusted and following is not None:
            assert adjusted[0].coordinator == following, \
                f"s{sid} obeyed s{adjusted[0].coordinator} while following s{following}: {line}"


def test_a_higher_id_joining_takes_over_with_a_higher_epoch(cluster):
    ids = {1, 2, 3}
    cluster.start(3)
    cluster.wait_serving(ids, timeout=30)
    probe = StatusProbe(cluster)
    try:
        _, old_epoch = probe.settled(ids, 10, coordinator=3)
        started_at = time.monotonic()
        cluster.start_server(6)
        new_epoch = wait_claim(cluster, 6, 0, old_epoch, timeout=20)
        final = probe.settled(ids | {6}, 10, coordinator=6, newer_than=old_epoch)
        took = time.monotonic() - started_at
    finally:
        probe.close()
    print(f"\ns6 joined and took over: epoch {old_epoch} -> {new_epoch}, "
          f"all agreed {took:.2f} s after it was started")
    assert final == (6, new_epoch)
    assert_one_claimant_per_epoch(cluster, ids | {6})
