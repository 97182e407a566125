"""Issue 3's long test: five users keep writing while the cluster churns.

Servers are added, stopped (SIGTERM), killed (SIGKILL), frozen (SIGSTOP then
SIGCONT) and restarted, and the broker is SIGKILLed and restarted once, while
five users post, follow and send private messages on threads of their own, each a
pipelined client with 8 writes in flight (``clients/pipeline.py``, issue 16) with a
generous deadline. At the end every acknowledged
write must be on every live server exactly once, every server must have the
same digest, and every feed and chat must read the same on every server.
"""
from __future__ import annotations

import time
from collections import Counter

import pytest

from common import protocol as P
from common.processes import wait_until
from tests.faults import (Writers, audit, freeze, read_everything, restart_broker, thaw,
                          wait_out_of_pool)
from tests.harness import SIGN_UP_EVENTS, Cluster

USERS = ["alice", "bob", "carol", "dave", "erin"]
MIN_WRITING_S = 20.0
WRITES_BETWEEN_FAULTS = 15
SERVE_TIMEOUT = 30.0


class Churn:
    """The faults of one run, each injected only once the users' writes flow again."""

    def __init__(self, cluster: Cluster, writers: Writers) -> None:
        self.c = cluster
        self.writers = writers
        self.injected: Counter = Counter()
        self.notes: list[str] = []

    def _then_let_writes_flow(self, kind: str, note: str) -> None:
        self.injected[kind] += 1
        self.notes.append(note)
        self.writers.wait_for(WRITES_BETWEEN_FAULTS, timeout=60)

    def add(self, server_id: int) -> None:
        """A server that never ran joins."""
        self._start(server_id, "join", "joined")

    def restart(self, server_id: int) -> None:
        """A server that ran before comes back on its old data folder."""
        self._start(server_id, "restart", "restarted")

    def _start(self, server_id: int, kind: str, what: str) -> None:
        started = time.monotonic()
        self.c.start_server(server_id)
        self.c.wait_serving({server_id}, timeout=SERVE_TIMEOUT)
        self._then_let_writes_flow(kind, f"server-{server_id} {what}, serving after "
                                         f"{time.monotonic() - started:.2f}s")

    def stop(self, server_id: int) -> None:
        code = self.c.terminate(f"server-{server_id}")
        assert code == 0, f"server-{server_id} exited {code} after SIGTERM"
        self._then_let_writes_flow("sigterm", f"server-{server_id} SIGTERM, exit code {code}")

    def kill(self, server_id: int) -> None:
        self.c.kill(f"server-{server_id}")
        in_pool = wait_out_of_pool(self.c, server_id, timeout=10)
        self._then_let_writes_flow("sigkill", f"server-{server_id} SIGKILL, out of the pool "
                                              f"after {in_pool:.2f}s")

    def freeze(self, server_id: int) -> None:
        name = f"server-{server_id}"
        freeze(self.c, name)
        in_pool = wait_out_of_pool(self.c, server_id, timeout=10)
        self.writers.wait_for(WRITES_BETWEEN_FAULTS, timeout=60)       # moves on without it
        thaw(self.c, name)
        wait_until(lambda: server_id in self.c.serving(), timeout=SERVE_TIMEOUT,
                   what=f"{name} serving again after SIGCONT")
        self._then_let_writes_flow("sigstop+sigcont", f"{name} SIGSTOP (out of the pool "
                                                      f"after {in_pool:.2f}s), SIGCONT")

    def restart_broker(self, serving: set[int]) -> None:
        started = time.monotonic()
        self.c.kill("broker")
        restart_broker(self.c)
        self.c.wait_serving(serving, timeout=SERVE_TIMEOUT)
        self._then_let_writes_flow("broker sigkill+restart", "broker SIGKILL and restart, "
                                   f"{sorted(serving)} serving after "
                                   f"{time.monotonic() - started:.2f}s")


@pytest.mark.timeout(180)
def test_five_users_keep_writing_through_joins_leaves_crashes_freezes_and_a_broker_restart(
        cluster: Cluster):
    c = cluster.start(3)
    c.wait_serving({1, 2, 3}, timeout=SERVE_TIMEOUT)
    for user in USERS:
        c.request(user, P.OP_REGISTER, {})
    writers = Writers(c, USERS, deadline=60.0, pause=0.05, max_posts=150, window=8).start()
    started = time.monotonic()
    churn = Churn(c, writers)
    writers.wait_for(WRITES_BETWEEN_FAULTS, timeout=30)

    churn.add(4)
    churn.stop(1)
    churn.kill(2)
    churn.restart(1)
    churn.freeze(3)
    churn.restart_broker({1, 3, 4})
    churn.restart(2)
    churn.add(5)
    churn.kill(4)
    churn.restart(4)
    churn.stop(3)
    churn.restart(3)
    while time.monotonic() - started < MIN_WRITING_S:
        writers.wait_for(WRITES_BETWEEN_FAULTS, timeout=60)
    writers.stop()
    wrote_for = time.monotonic() - started

    servers = [1, 2, 3, 4, 5]
    c.wait_serving(servers, timeout=SERVE_TIMEOUT)
    live = c.wait_converged(timeout=30)
    report = audit(read_everything(c, servers, USERS), writers.acked)
    kinds = Counter(w.op for w in writers.acked)
    print(f"\n[churn] {len(USERS)} users wrote for {wrote_for:.1f}s; "
          f"writes acknowledged: {len(writers.acked)} ({dict(kinds)}); "
          f"faults injected: {sum(churn.injected.values())} ({dict(churn.injected)}); "
          f"writes lost: {len({w for _, _, w in report.lost})}; "
          f"(write, server) pairs checked: {report.checked}; "
          f"slowest write: {writers.max_latency():.2f}s; errors: {len(writers.errors)}")
    for note in churn.notes:
        print(f"[churn]   {note}")

    assert not report.lost, f"acked writes missing: {report.lost[:10]}"
    assert not report.duplicated, f"acked writes seen twice: {report.duplicated[:10]}"
    assert not writers.errors, writers.errors
    assert set(live) == set(servers)
    assert len({s["digest"] for s in live.values()}) == 1
    # every write counted once on every server, follows included
    assert {s["events"] for s in live.values()} == {len(USERS) * SIGN_UP_EVENTS
                                                    + len(writers.acked)}
    assert not report.disordered, report.disordered[:10]
    assert wrote_for >= MIN_WRITING_S
