"""The benchmark's clusters: a broker and servers in a folder of their own on free
ports (127.0.0.1), seeded with stored posts before they start.

Stored posts are seeded by writing the same write-ahead log segment into each
server's folder before it starts; ``wait_folded`` tells when every server has
folded that segment into TinyDB, so no rate is taken while it does.
"""
from __future__ import annotations

import time
from pathlib import Path

import zmq

from clients.bench.cpu import cpu_seconds
from common import cluster_status
from common import protocol as P
from common.broker_client import BrokerClient
from common.keys import cluster_broker_key
from common.config import load_config
from common.histogram import Histogram
from common.processes import ProcessGroup, free_port_base, wait_until
from servers.records import wal_line

AUTHORS = 100
"""Seeded posts are spread over this many authors."""
SEED_MESSAGES = 50
"""Seeded direct messages per pair of bench users (what the chat phase reads)."""
TEXT = "benchmark post: " + "lorem ipsum dolor sit amet " * 4


def bench_user(worker: int) -> str:
    return f"bench{worker}"


class BenchCluster:
    """A broker and servers in a folder of their own on free ports; ``stop()`` ends them.
    Its servers run with ``--fsync`` if ``fsync``, else with ``--no-fsync`` (whatever
    ``SOCIAL_FSYNC`` says), so each figure says which mode it measured."""

    def __init__(self, folder: Path, fsync: bool = False) -> None:
        self.folder = folder
        self.fsync = fsync
        self.config = load_config(port_base=free_port_base(), host="127.0.0.1",
                                  data_dir=str(folder / "data"), log_dir=str(folder / "logs"))
        self.group = ProcessGroup(self.config)
        self.ctx = zmq.Context()
        self.ctx.linger = 0
        self.broker_key = cluster_broker_key(self.config.data_dir)   # the broker loads it
        self.broker = BrokerClient(self.ctx, self.frontend, self.broker_key)

    @property
    def frontend(self) -> str:
        return self.config.endpoint(self.config.frontend_port)

    def start(self, servers: int, echo: bool = False, timeout: float = 30.0) -> None:
        self.group.start_broker()
        for server_id in range(1, servers + 1):
            if echo:
                self.group.start(f"echo-{server_id}",
                                 ["clients.bench.echo", "--id", str(server_id)])
            else:
                self.start_server(server_id)
        self.wait_serving(range(1, servers + 1), timeout)

    def start_server(self, server_id: int) -> None:
        self.group.start_server(server_id, "--fsync" if self.fsync else "--no-fsync")

    def seed(self, server_ids, posts: int, clients: int) -> int:
        """The same log segment in each server's folder; returns the events written."""
        lines = [wal_line(P.convert(e, P.Event)) for e in seed_events(posts, clients)]
        blob = b"".join(lines)                      # each line with its checksum
        for server_id in server_ids:
            folder = self.config.server_data_dir(server_id)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "wal-000001.jsonl").write_bytes(blob)
        return len(lines)

    def wait_folded(self, server_ids, timeout: float) -> None:
        """Every server has folded the seeded segment into TinyDB (it deletes the file),
        so no checkpoint of the seed runs while a rate is being measured."""
        paths = [self.config.server_data_dir(i) / "wal-000001.jsonl" for i in server_ids]
        wait_until(lambda: not any(p.exists() for p in paths), timeout, interval=0.1,
                   what="seeded log folded into TinyDB")

    def status(self, timeout: float = 1.0) -> dict | None:
        """The broker's ``status`` answer, or None if none comes in time."""
        return self.broker.status(timeout)

    def rows(self) -> dict[int, dict]:
        return cluster_status.rows_by_id(self.status())

    def serving(self, server_id: int) -> dict | None:
        return cluster_status.serving(self.rows()).get(server_id)

    def wait_serving(self, ids, timeout: float) -> None:
        cluster_status.wait_serving(self.rows, ids, timeout)

    def lag_histogram(self, ids) -> Histogram | None:
        """The sum of the replication-lag histograms of servers ``ids`` (None if a
        server's row is missing)."""
        rows = self.rows()
        total = Histogram()
        for server_id in ids:
            hist = Histogram.parse(rows.get(server_id, {}).get("repl_lag_hist"))
            if hist is None:
                return None
            total = total.plus(hist)
        return total

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds each live process of the cluster has used so far, by name
        (``broker``, ``server-N``, ``echo-N``; threads and children included)."""
        pids = {name: proc.pid for name, proc in self.group.procs.items() if proc.poll() is None}
        used = cpu_seconds(pids.values())
        return {name: used[pid] for name, pid in pids.items() if pid in used}

    def stop(self) -> None:
        try:
            self.group.stop_all(timeout=1.5)
        finally:
            self.broker.close()
            self.ctx.destroy(0)


def seed_events(posts: int, clients: int) -> list[dict]:
    """Users (authors and bench users), follows, messages between bench users, then posts;
    origin 1, seq and lamport 1..N contiguous, unique ids, timestamps increasing."""
    authors = [f"author{i:03d}" for i in range(AUTHORS)]
    users = [bench_user(w) for w in range(clients)]
    plan: list[tuple[str, str, dict]] = [(P.EV_REGISTER, u, {}) for u in authors + users]
    for w, user in enumerate(users):
        plan += [(P.EV_FOLLOW, user, {"target": authors[(w * 7 + k) % AUTHORS]}) for k in range(5)]
        plan += [(P.EV_DM, user, {"to": users[(w + 1) % clients], "text": f"hello {k}"})
                 for k in range(SEED_MESSAGES)]
    plan += [(P.EV_POST, authors[i % AUTHORS], {"text": f"{TEXT}{i}"}) for i in range(posts)]
    first_ts = time.time() - len(plan) * 0.001
    return [{"id": f"seed-{n:07d}", "kind": kind, "user": user, "lamport": n,
             "ts": round(first_ts + n * 0.001, 6), "origin": 1, "seq": n, "data": data}
            for n, (kind, user, data) in enumerate(plan, start=1)]
