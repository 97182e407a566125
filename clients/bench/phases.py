"""The benchmark's phases: one ``Bench`` runs them cluster by cluster and keeps their figures.

Each cluster is started fresh (``clients/bench/cluster.py``), measured phase after
phase by the load of ``clients/bench/load.py``, and stopped; each phase prints a
progress line (``[n/17] what ... result``) and puts its figures in ``figures``, the
dict the JSON and the table are made of (``clients/bench/report.py``). A phase that
fails (no request succeeded, a timeout, a socket error) is noted and skips the rest
of its cluster's phases, never the other clusters'; ``failures`` says which.

``Plan`` holds the sizes and durations of a run: ``FULL`` for ``python run_all.py
bench``, ``QUICK`` for ``--quick`` (CI, the tests).
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from clients.bench.cluster import TEXT, BenchCluster, bench_user
from clients.bench.load import BenchError, Load, LoadResult, LoadWorkers
from clients.bench.report import batch_sizes, describe_batches
from common import protocol as P
from common.histogram import Histogram
from common.cluster_status import rows_by_id
from common.config import Config, load_config
from common.processes import wait_until


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one run."""
    phase_s: float            # seconds of measured load per phase
    stored_small: int         # posts stored for the write phases
    stored_large: int         # posts stored for growth, reads and recovery
    start_timeout: float      # seconds a cluster may take to serve (loading included)
    clients: int = 8


FULL = Plan(phase_s=5.0, stored_small=1_000, stored_large=100_000, start_timeout=120.0)
QUICK = Plan(phase_s=1.0, stored_small=1_000, stored_large=10_000, start_timeout=30.0)

BENCH_PASSWORD = secrets.token_urlsafe(16)
"""The bench users' password, drawn per run: every worker logs in with it before its
window (register + login cost nothing of the posts/s measured)."""
PIPELINE_WINDOW = 32
"""Posts each client of the pipelined phases keeps in flight (issue 16)."""
PACED_LINGER = 0.01
"""Seconds a request of the pipelined paced phase may wait for company (``Pipeline``'s
``linger``): sent alone, each of 5,000 requests a second cost every process a wake-up,
and the cluster fell behind at half the load it takes flat out. The latency counts
the wait (it runs from each request's scheduled time)."""
HALF_LOAD = 0.5
"""Paced phases run at this fraction of the measured 8-client write rate."""
LAG_DRAIN_S = 3.0
"""After a replication-lag phase, how long to wait for the last ACKs."""


# --- the run ----------------------------------------------------------------------------------
class Bench:
    STEPS = 17

    def __init__(self, plan: Plan, root: Path) -> None:
        self.plan = plan
        self.root = root
        self.figures: dict = {}
        self.failures: list[str] = []
        self.step_no = 0
        self.in_step = False                 # a progress line waits for its result
        self.workers: LoadWorkers | None = None
        self.config: Config = load_config()

    # --- output ----------------------------------------------------------------------------
    def step(self, what: str) -> None:
        self.step_no += 1
        print(f"[{self.step_no}/{self.STEPS}] {what} ... ", end="", flush=True)
        self.in_step = True

    def done(self, result: str) -> None:
        print(result, flush=True)
        self.in_step = False

    def note(self, what: str) -> None:
        print(f"{chr(10) if self.in_step else ''}       {what}", flush=True)
        self.in_step = False

    # --- helpers ---------------------------------------------------------------------------------
    def cluster(self, name: str, fsync: bool = False) -> BenchCluster:
        return BenchCluster(self.root / name, fsync)

    def start_cluster(self, cluster: BenchCluster, servers: int, echo: bool = False,
                      stored: int = 0) -> None:
        began = time.monotonic()
        kind = ("echo servers" if echo
                else f"servers ({'--fsync' if cluster.fsync else 'no fsync'})")
        if stored:
            events = cluster.seed(range(1, servers + 1), stored, self.plan.clients)
        cluster.start(servers, echo, self.plan.start_timeout)
        if stored:
            cluster.wait_folded(range(1, servers + 1), self.plan.start_timeout)
        what = f", {stored:,} posts stored ({events:,} events)" if stored else ""
        self.note(f"cluster: broker + {servers} {kind}{what} on port {cluster.config.port_base}, "
                  f"serving after {time.monotonic() - began:.1f} s")

    def load(self, cluster: BenchCluster, op: str, args_of, clients: int | None = None,
             rate: float | None = None, record_acks: bool = False, setup=(),
             cpu: bool = False, window: int = 1, linger: float = 0.0) -> LoadResult:
        """Run ``op`` from ``clients`` workers (``args_of(worker)`` gives its args), each
        a Pipeline with ``window`` requests in flight on the fast path (1: one at a
        time; 0: the bare routed client of issue 6), each request waiting up to ``linger``
        s for company; ``cpu``: read the cluster's CPU
        time at the window's start and end."""
        clients = clients or self.plan.clients
        per_worker = rate / clients if rate else None
        loads = [Load(cluster.frontend, bench_user(w), op, args_of(w), per_worker, record_acks,
                      tuple(setup) + ((op, args_of(w)),), password=BENCH_PASSWORD,
                      broker_key=cluster.broker_key, window=window,
                      port_base=cluster.config.port_base, linger=linger)
                 for w in range(clients)]
        result = self.workers.run(loads, self.plan.phase_s,
                                  probe=cluster.cpu_seconds if cpu else None)
        self.count_errors(op, result)
        return result

    def count_errors(self, op: str, result: LoadResult) -> None:
        """Note a phase's errors, keep them in the figures; BenchError if none succeeded."""
        if result.errors:
            self.note(f"errors: {dict(result.errors)}")
        self.figures.setdefault("errors", {}).update(
            {f"{self.step_no}:{op}:{code}": n for code, n in result.errors.items()})
        if not result.latencies:
            raise BenchError(f"no {op} request succeeded ({dict(result.errors)})")

    def cpu_per_request(self, result: LoadResult, prefix: str, per: str) -> str:
        """The cluster's CPU time in the window, in µs per ok reply: figures
        ``{prefix}cpu_us_per_{per}`` (the sum), ``..._by_process`` and, in CPUs,
        ``{prefix}cpu_cores_busy``. Returns the text for the progress line."""
        before, after = result.probed
        seconds = {name: after[name] - before[name] for name in after if name in before}
        key = f"{prefix}cpu_us_per_{per}"
        self.figures[f"{key}_by_process"] = {
            name: s / len(result.latencies) * 1e6 for name, s in seconds.items()}
        self.figures[key] = sum(self.figures[f"{key}_by_process"].values())
        self.figures[f"{prefix}cpu_cores_busy"] = sum(seconds.values()) / result.seconds
        return f"CPU {self.figures[key]:,.0f} µs/{per}"

    def attempt(self, name: str, block) -> None:
        """Run one cluster's phases; a failure skips the rest of that cluster."""
        try:
            block()
        except (BenchError, TimeoutError, OSError, zmq.ZMQError) as exc:
            self.note(f"FAILED: {name}: {type(exc).__name__}: {exc}")
            self.failures.append(f"{name} (step {self.step_no}): {exc}")

    # --- the clusters ---------------------------------------------------------------------------
    def run(self) -> None:
        self.workers = LoadWorkers(self.plan.clients)
        try:
            self.attempt("baseline", self.baseline)
            self.attempt("writes", self.writes)
            self.attempt("writes with --fsync", self.writes_fsync)
            self.attempt("growth, reads and recovery", self.large)
        finally:
            self.workers.stop()

    def baseline(self) -> None:
        cluster = self.cluster("baseline")
        try:
            self.start_cluster(cluster, 3, echo=True)
            self.step("baseline: broker + 3 echo servers, 8 clients")
            result = self.load(cluster, P.OP_POST, lambda w: {"text": TEXT}, cpu=True)
            self.figures["baseline_rps"] = result.rate
            self.figures["baseline_p99_ms"] = result.ms(99)
            cpu = self.cpu_per_request(result, "baseline_", "req")
            self.done(f"{result.rate:,.0f} req/s, p99 {result.ms(99):.2f} ms, {cpu}")
        finally:
            cluster.stop()

    def writes(self) -> None:
        cluster = self.cluster("writes")
        try:
            self.start_cluster(cluster, 3, stored=self.plan.stored_small)
            f = self.figures
            post = lambda w: {"text": TEXT}  # noqa: E731
            self.step(f"writes, 8 clients, {self.plan.stored_small:,} stored")
            result = self.load(cluster, P.OP_POST, post, cpu=True)
            f["posts_per_s"] = f["rate_small_store"] = result.rate
            f["p50_ms"], f["p95_ms"], f["p99_ms"] = result.ms(50), result.ms(95), result.ms(99)
            if f.get("baseline_rps"):
                f["ratio"] = result.rate / f["baseline_rps"]
            cpu = self.cpu_per_request(result, "", "post")
            self.done(f"{result.rate:,.0f} posts/s, p50 {f['p50_ms']:.2f} ms, "
                      f"p95 {f['p95_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms, {cpu}")

            self.step("writes, 1 client")
            result = self.load(cluster, P.OP_POST, post, clients=1)
            f["posts_per_s_1_client"], f["p50_ms_1_client"] = result.rate, result.ms(50)
            self.done(f"{result.rate:,.0f} posts/s, p50 {result.ms(50):.2f} ms")

            self.step("direct messages, 8 clients")
            result = self.load(cluster, P.OP_DM, lambda w: {
                "to": bench_user((w + 1) % self.plan.clients), "text": TEXT})
            f["dms_per_s"], f["dm_p99_ms"] = result.rate, result.ms(99)
            self.done(f"{result.rate:,.0f} messages/s, p99 {result.ms(99):.2f} ms")

            half = HALF_LOAD * f["posts_per_s"]
            self.step(f"writes paced at half load, {half:,.0f} posts/s")
            result = self.load(cluster, P.OP_POST, post, rate=half)
            f["half_load_per_s"], f["p99_half_load_ms"] = result.rate, result.ms(99)
            f["p50_half_load_ms"] = result.ms(50)
            self.done(f"{result.rate:,.0f} posts/s done, p50 {result.ms(50):.2f} ms, "
                      f"p99 {result.ms(99):.2f} ms")

            self.pipelined(cluster)
            self.http_writes(cluster)
            self.replication_lag(cluster, half)
        finally:
            cluster.stop()

    def pipelined(self, cluster: BenchCluster) -> None:
        """Issue 16: 8 clients with ``PIPELINE_WINDOW`` posts in flight each, then paced
        at half that rate; the batch sizes the servers saw (``status``: ``batched``)."""
        f, window = self.figures, PIPELINE_WINDOW
        self.step(f"writes, {self.plan.clients} clients x {window} in flight")
        before = cluster.rows()
        result = self.load(cluster, P.OP_POST, lambda w: {"text": TEXT}, cpu=True,
                           window=window)
        f["posts_per_s_pipelined"] = result.rate
        f["p50_ms_pipelined"], f["p99_ms_pipelined"] = result.ms(50), result.ms(99)
        cpu = self.cpu_per_request(result, "pipelined_", "post")
        f["batch"] = batch_sizes(before, cluster.rows())
        self.done(f"{result.rate:,.0f} posts/s, p50 {result.ms(50):.2f} ms, "
                  f"p99 {result.ms(99):.2f} ms, {cpu}, {describe_batches(f['batch'])}")
        half = HALF_LOAD * result.rate
        self.step(f"pipelined writes paced at half load, {half:,.0f} posts/s, "
                  f"lingering up to {PACED_LINGER * 1000:g} ms")
        result = self.load(cluster, P.OP_POST, lambda w: {"text": TEXT}, rate=half,
                           window=window, linger=PACED_LINGER)
        f["pipelined_half_load_per_s"] = result.rate
        f["p99_half_load_ms_pipelined"] = result.ms(99)
        self.done(f"{result.rate:,.0f} posts/s done, p50 {result.ms(50):.2f} ms, "
                  f"p99 {result.ms(99):.2f} ms")

    def http_writes(self, cluster: BenchCluster) -> None:
        """Issue 14: the same posts through the web gateway, 8 HTTP clients flat out,
        then paced at half that rate (``clients/bench/http.py``)."""
        from clients.bench.http import run_http, start_gateway
        f = self.figures
        port = start_gateway(cluster.group)
        users = [bench_user(w) for w in range(self.plan.clients)]
        self.step(f"writes through the web gateway (HTTP), {self.plan.clients} clients")
        result = run_http(port, users, BENCH_PASSWORD, TEXT, self.plan.phase_s,
                          probe=cluster.cpu_seconds)
        self.count_errors("http post", result)
        f["http_posts_per_s"], f["http_p50_ms"], f["http_p99_ms"] = \
            result.rate, result.ms(50), result.ms(99)
        cpu = self.cpu_per_request(result, "http_", "post")
        f["http_gateway_cpu_us_per_post"] = f["http_cpu_us_per_post_by_process"].get("web")
        self.done(f"{result.rate:,.0f} posts/s, p50 {result.ms(50):.2f} ms, "
                  f"p99 {result.ms(99):.2f} ms, {cpu} (the gateway "
                  f"{f['http_gateway_cpu_us_per_post'] or 0:,.0f})")
        half = HALF_LOAD * f["http_posts_per_s"]
        self.step(f"writes through the web gateway paced at half load, {half:,.0f} posts/s")
        result = run_http(port, users, BENCH_PASSWORD, TEXT, self.plan.phase_s, rate=half)
        self.count_errors("http post", result)
        f["http_half_load_per_s"], f["http_p99_half_load_ms"] = result.rate, result.ms(99)
        self.done(f"{result.rate:,.0f} posts/s done, p50 {result.ms(50):.2f} ms, "
                  f"p99 {result.ms(99):.2f} ms")
        cluster.group.terminate("web")

    def writes_fsync(self) -> None:
        """The 8-client write phase again, every server fsyncing its log before it
        counts a copy (``--fsync``): what the durability of an ack costs."""
        cluster = self.cluster("writes-fsync", fsync=True)
        try:
            self.start_cluster(cluster, 3, stored=self.plan.stored_small)
            f = self.figures
            self.step(f"writes with --fsync, 8 clients, {self.plan.stored_small:,} stored")
            result = self.load(cluster, P.OP_POST, lambda w: {"text": TEXT})
            f["posts_per_s_fsync"] = result.rate
            f["p50_ms_fsync"], f["p99_ms_fsync"] = result.ms(50), result.ms(99)
            if f.get("posts_per_s"):
                f["fsync_ratio"] = result.rate / f["posts_per_s"]
            self.done(f"{result.rate:,.0f} posts/s, p50 {f['p50_ms_fsync']:.2f} ms, "
                      f"p99 {f['p99_ms_fsync']:.2f} ms")
            window = PIPELINE_WINDOW
            self.step(f"writes with --fsync, {self.plan.clients} clients x {window} in flight")
            before = cluster.rows()
            result = self.load(cluster, P.OP_POST, lambda w: {"text": TEXT}, window=window)
            f["posts_per_s_fsync_pipelined"] = result.rate
            f["p99_ms_fsync_pipelined"] = result.ms(99)
            f["batch_fsync"] = batch_sizes(before, cluster.rows())
            self.done(f"{result.rate:,.0f} posts/s, p99 {result.ms(99):.2f} ms, "
                      f"{describe_batches(f['batch_fsync'])}")
        finally:
            cluster.stop()

    def replication_lag(self, cluster: BenchCluster, rate: float) -> None:
        """Origins measure it (``servers/replication_lag.py``): from the answer to a
        write until every live server's ACK covers it. Their histograms are read
        before and after the load; the difference is this phase's."""
        cluster.start_server(4)
        cluster.wait_serving([4], self.plan.start_timeout)
        self.step(f"replication lag, 4 servers (3 replicas), {rate:,.0f} posts/s")
        ids = range(1, 5)
        before = cluster.lag_histogram(ids)
        if before is None:
            raise BenchError("a server's status has no replication-lag histogram")
        result = self.load(cluster, P.OP_POST, lambda w: {"text": TEXT}, rate=rate,
                           record_acks=True)
        def measured() -> Histogram:
            return (cluster.lag_histogram(ids) or before).minus(before)
        try:
            wait_until(lambda: measured().total >= len(result.acks), LAG_DRAIN_S, interval=0.1,
                       what="every acked write on every server")
        except TimeoutError:
            pass                                  # reported as replication_unresolved
        lag = measured()
        missing = max(0, len(result.acks) - lag.total)
        if not lag.total:
            raise BenchError(f"no acked write was seen on all 4 servers ({missing} missing)")
        p50, p99 = lag.percentile(50), lag.percentile(99)
        self.figures["replication_lag_ms"] = {"p50": p50, "p99": p99}
        self.figures["replication_lag_load_per_s"] = result.rate
        self.figures["replication_unresolved"] = missing
        self.done(f"p50 <= {p50:g} ms, p99 <= {p99:g} ms (bucket bounds)"
                  + (f", {missing} writes not seen everywhere" if missing else ""))

    def large(self) -> None:
        cluster = self.cluster("large")
        f, stored = self.figures, self.plan.stored_large
        try:
            self.start_cluster(cluster, 3, stored=stored)
            self.step(f"writes, 8 clients, {stored:,} stored")
            result = self.load(cluster, P.OP_POST, lambda w: {"text": TEXT})
            f["rate_large_store"] = result.rate
            if f.get("rate_small_store"):
                f["growth_ratio"] = result.rate / f["rate_small_store"]
            self.done(f"{result.rate:,.0f} posts/s, growth ratio "
                      f"{f.get('growth_ratio', float('nan')):.2f}")

            self.step(f"feed reads, 8 clients, {stored:,} posts")
            result = self.load(cluster, P.OP_FEED, lambda w: {"limit": P.DEFAULT_LIMIT})
            f["feed_rps"], f["feed_p99_ms"] = result.rate, result.ms(99)
            self.done(f"{result.rate:,.0f} req/s, p99 {result.ms(99):.2f} ms")

            self.step("chat reads, 8 clients")
            result = self.load(cluster, P.OP_CHAT, lambda w: {
                "with": bench_user((w + 1) % self.plan.clients), "limit": P.DEFAULT_LIMIT})
            f["chat_rps"], f["chat_p99_ms"] = result.rate, result.ms(99)
            self.done(f"{result.rate:,.0f} req/s, p99 {result.ms(99):.2f} ms")

            self.catch_up(cluster)
            self.failover(cluster)
        finally:
            cluster.stop()

    def catch_up(self, cluster: BenchCluster) -> None:
        self.step("catch-up of a new server (python -m servers --id 4)")
        began = time.monotonic()
        cluster.start_server(4)
        row = wait_until(lambda: cluster.serving(4), self.plan.start_timeout, interval=0.05,
                         what="server 4 serving")
        self.figures["catchup_s"] = time.monotonic() - began
        # READY set the phase; the row's other fields are from the heartbeat before it
        row = wait_until(lambda: (r := cluster.serving(4)) and r["lamport"] > row["lamport"] and r,
                         5.0, interval=0.05, what="a heartbeat of server 4 after READY")
        self.figures["catchup_events"] = row["events"]
        self.done(f"{self.figures['catchup_s']:.2f} s for {row['events']:,} events")

    def failover(self, cluster: BenchCluster) -> None:
        self.step("SIGKILL of the coordinator")

        def settled():
            """Bully's steady state: every live server follows the highest live id."""
            live = [r for r in cluster.rows().values() if r["alive"]]
            claims = {(r.get("coordinator"), r.get("epoch")) for r in live}
            top = max((r["id"] for r in live), default=None)
            return top if len(live) >= 2 and len(claims) == 1 and claims.pop()[0] == top else None
        victim = wait_until(settled, 15.0, interval=0.1,
                            what="every live server following the highest id")
        seen: dict[str, float] = {}
        killed_at = time.monotonic()
        cluster.group.kill(f"server-{victim}")

        def recovered():
            status = cluster.status(0.5)
            now = time.monotonic()
            if status is None:
                return False
            if status["coordinator"] not in (None, victim):
                seen.setdefault("failover", now)
            if not rows_by_id(status).get(victim, {}).get("alive", False):
                seen.setdefault("residency", now)
            return len(seen) == 2
        wait_until(recovered, 20.0, interval=0.02, what="a new coordinator and the victim out of the pool")
        self.figures["failover_s"] = seen["failover"] - killed_at
        self.figures["pool_residency_s"] = seen["residency"] - killed_at
        self.figures["killed_coordinator"] = victim
        self.done(f"server {victim} killed: new coordinator after "
                  f"{self.figures['failover_s']:.2f} s, out of the pool after "
                  f"{self.figures['pool_residency_s']:.2f} s")
