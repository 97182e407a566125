"""The benchmark behind ``python run_all.py bench``: where the system stands, in one run.

What it measures, in three fresh clusters (tmp folder, free ports, 127.0.0.1):

1. **Baseline**: broker + 3 echo servers (``servers.echo``), 8 clients flat out.
2. **Writes** (3 servers, 1,000 posts stored): acked posts/s with 8 clients and
   with 1, messages/s with 8, latency percentiles, then p99 with the clients paced
   to half of the 8-client rate.
3. **Replication lag**: a 4th server joins the same cluster (replicas stay 3, so an
   ack no longer means every server holds the write); this process subscribes to
   the bus and notes when every server's ACK version vector covers each post.
4. **Growth and reads** (3 servers, 100,000 posts stored): write rate, feed and
   chat rates and p99.
5. **Recovery** in the same cluster: a new server's catch-up time, the time from
   SIGKILL of the coordinator to a new one, and how long the killed server stays
   in the broker's pool.

How: load comes from spawned worker processes, never from this interpreter. Each
worker is a synchronous client (one raw DEALER, frames from ``common.protocol``);
all of them count only replies that arrive inside one shared window on the
system-wide monotonic clock. A paced worker sends on a fixed schedule and measures
latency from the *scheduled* send time, so a stall is not hidden by the sends it
delays (coordinated omission). Stored posts are seeded by writing the same
write-ahead log segment into each server's folder before it starts, and no rate
is taken until every server has folded that segment into TinyDB.
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import platform
import queue
import random
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import orjson
import zmq

from common import protocol as P
from common.clock import LamportClock
from common.config import Config, load_config
from common.processes import ProcessGroup, wait_until


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

REPLY_TIMEOUT = 5.0
"""Seconds a load worker waits for one reply before it counts the request lost."""
START_LEAD = 0.1
"""Seconds between "go" and the window's start, so every worker is there at the start."""
HALF_LOAD = 0.5
"""Paced phases run at this fraction of the measured 8-client write rate."""
LAG_DRAIN_S = 3.0
"""After a replication-lag phase, how long to wait for the last ACKs."""
AUTHORS = 100
"""Seeded posts are spread over this many authors."""
SEED_MESSAGES = 50
"""Seeded direct messages per pair of bench users (what the chat phase reads)."""
TEXT = "benchmark post: " + "lorem ipsum dolor sit amet " * 4

TARGETS = {  # issue 6, shown next to the figures; tests assert none of them
    "ratio": "≥ 0.5", "posts_per_s": "≥ 5,000", "p99_half_load_ms": "≤ 10 ms",
    "growth_ratio": "≥ 0.8", "feed_p99_ms": "≤ 20 ms", "catchup_s": "≤ 10 s",
    "failover_s": "≤ 3 s"}


class BenchError(RuntimeError):
    """A phase that could not be measured."""


def bench_user(worker: int) -> str:
    return f"bench{worker}"


# --- load workers (separate processes) ------------------------------------------------
@dataclass(frozen=True)
class Load:
    """What one worker does in one phase."""
    endpoint: str
    user: str
    op: str
    args: dict
    rate: float | None = None        # requests/s on a fixed schedule; None: flat out
    record_acks: bool = False        # return (rid, ack time) of every ok reply
    setup: tuple = ()                # (op, args) requests before the window, not counted
    tag: int = 0                     # which run() this Load belongs to


class Requester:
    """A synchronous client on one raw DEALER, as the real client talks to the broker."""

    def __init__(self, ctx: zmq.Context, endpoint: str, user: str) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.user = user
        self.lamport = LamportClock()
        self.prefix = uuid.uuid4().hex[:10]
        self.sent = 0
        self.sock = self._open()

    def _open(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(self.endpoint)
        return sock

    def call(self, op: str, args: dict) -> tuple[str, bool | None, str | None]:
        """(rid, ok, error code); ok is None when no reply came within REPLY_TIMEOUT."""
        self.sent += 1
        rid = f"{self.prefix}-{self.sent}"
        body = {"rid": rid, "op": op, "user": self.user, "args": args, "server": None,
                "time": time.time()}
        self.sock.send_multipart(P.encode(P.REQUEST, self.lamport.tick(), body))
        deadline = time.monotonic() + REPLY_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(max(1, int(remaining * 1000))):
                self.sock.close(0)           # a late reply must not answer the next request
                self.sock = self._open()
                return rid, None, "timeout"
            msg = P.decode(self.sock.recv_multipart())
            self.lamport.merge(msg.lamport)
            if msg.body["rid"] == rid:
                ok = msg.body["ok"]
                return rid, ok, None if ok else msg.body.get("code", "?")

    def close(self) -> None:
        self.sock.close(0)


def run_window(req: Requester, load: Load, start: float, end: float, offset: float) -> dict:
    """Send until ``end``; count the replies that arrive inside [start, end]."""
    latencies: list[float] = []
    acks: list[tuple[str, float]] = []
    errors: Counter = Counter()
    interval = 1.0 / load.rate if load.rate else 0.0
    next_at = start + offset * interval
    while True:
        now = time.monotonic()
        if load.rate:
            if next_at >= end:
                break
            if next_at > now:
                time.sleep(next_at - now)      # pacing, not synchronization
            sent, next_at = next_at, next_at + interval
        else:
            if now >= end:
                break
            sent = now
        rid, ok, code = req.call(load.op, load.args)
        done = time.monotonic()
        if done > end:
            break
        if ok:
            latencies.append(done - sent)
            if load.record_acks:
                acks.append((rid, done))
        else:
            errors[code] += 1
    return {"latencies": latencies, "acks": acks, "errors": dict(errors)}


def worker_main(worker: int, tasks, results) -> None:
    """A load process: for each Load, set up, report ready, wait for go (or None), run
    the window, report. Every message carries the Load's tag, so a late message from an
    aborted phase is never taken for one of the next."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the orchestrator stops us
    ctx = zmq.Context()
    ctx.linger = 0
    try:
        while (load := tasks.get()) is not None:
            req = Requester(ctx, load.endpoint, load.user)
            try:
                results.put(("ready", load.tag, worker, setup_problem(req, load)))
                go = tasks.get()
                if go is not None:
                    start, end, offset = go
                    results.put(("done", load.tag, worker,
                                 run_window(req, load, start, end, offset)))
            except Exception as exc:  # noqa: BLE001 - report it, never hang the orchestrator
                results.put(("failed", load.tag, worker, f"{type(exc).__name__}: {exc}"))
            finally:
                req.close()
    finally:
        ctx.destroy(0)


def setup_problem(req: Requester, load: Load) -> str | None:
    """Send the setup requests; what went wrong, or None."""
    try:
        for op, args in load.setup:
            _, ok, code = req.call(op, args)
            if not ok:
                return f"setup {op} as {load.user}: {code}"
    except Exception as exc:  # noqa: BLE001 - the orchestrator reports it
        return f"setup {type(exc).__name__}: {exc}"
    return None


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float] = field(default_factory=list)   # seconds, every ok reply
    acks: list[tuple[str, float]] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


class LoadWorkers:
    """Spawned load processes, started once and reused by every phase."""

    def __init__(self, count: int) -> None:
        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(count)]
        self.tag = 0
        self.procs = [ctx.Process(target=worker_main, args=(i, self.tasks[i], self.results),
                                  name=f"bench-load-{i}", daemon=True) for i in range(count)]
        for proc in self.procs:
            proc.start()

    def run(self, loads: list[Load], seconds: float) -> LoadResult:
        """Run ``loads`` (one per worker) over one shared window of ``seconds``."""
        self.tag += 1
        for i, load in enumerate(loads):
            self.tasks[i].put(replace(load, tag=self.tag))
        go = None
        try:
            ready = self._collect("ready", len(loads), 60.0)
            problems = [p for p in ready.values() if p]
            if problems:
                raise BenchError("; ".join(problems))
            start = time.monotonic() + START_LEAD
            go = (start, start + seconds)
        finally:                 # every worker that got a Load waits for go or None
            for i in range(len(loads)):
                self.tasks[i].put(go and (*go, i / len(loads)))
        done = self._collect("done", len(loads), seconds + REPLY_TIMEOUT + 30.0)
        result = LoadResult(seconds)
        for part in done.values():
            result.latencies.extend(part["latencies"])
            result.acks.extend(part["acks"])
            result.errors.update(part["errors"])
        return result

    def _collect(self, kind: str, count: int, timeout: float) -> dict:
        """``count`` messages of ``kind`` for the current tag, by worker."""
        got: dict[int, object] = {}
        deadline = time.monotonic() + timeout
        while len(got) < count:
            if time.monotonic() >= deadline:
                raise BenchError(f"load workers: {count - len(got)} of {count} not {kind} "
                                 f"after {timeout:.0f} s")
            try:
                what, tag, worker, payload = self.results.get(timeout=0.5)
            except queue.Empty:
                continue
            if tag != self.tag:
                continue                       # left over from an aborted phase
            if what == "failed":
                raise BenchError(f"load worker {worker}: {payload}")
            if what == kind:
                got[worker] = payload
        return got

    def stop(self) -> None:
        for tasks in self.tasks:
            tasks.put(None)
        for proc in self.procs:
            proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)


# --- clusters -----------------------------------------------------------------------------
def free_port_base(servers: int = 10) -> int:
    """A base whose ports (base..base+3, base+101..base+100+servers) are all free now."""
    def can_bind(port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(20000, 60000)
        if all(can_bind(p) for p in [base + i for i in range(4)]
               + [base + 100 + i for i in range(1, servers + 1)]):
            return base
    raise BenchError("no free port base found")


class BenchProcesses(ProcessGroup):
    def start_echo(self, server_id: int):
        return self._start(f"echo-{server_id}", ["servers.echo", "--id", str(server_id)])


class BenchCluster:
    """A broker and servers in a folder of their own on free ports; ``stop()`` ends them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config = load_config(port_base=free_port_base(), host="127.0.0.1",
                                  data_dir=str(folder / "data"), log_dir=str(folder / "logs"))
        self.group = BenchProcesses(self.config)
        self.ctx = zmq.Context()
        self.ctx.linger = 0
        self._status_sock: zmq.Socket | None = None
        self.lamport = LamportClock()

    @property
    def frontend(self) -> str:
        return self.config.endpoint(self.config.frontend_port)

    def start(self, servers: int, echo: bool = False, timeout: float = 30.0) -> None:
        self.group.start_broker()
        for server_id in range(1, servers + 1):
            if echo:
                self.group.start_echo(server_id)
            else:
                self.group.start_server(server_id)
        self.wait_serving(range(1, servers + 1), timeout)

    def seed(self, server_ids, posts: int, clients: int) -> int:
        """The same log segment in each server's folder; returns the events written."""
        lines = [orjson.dumps(e) for e in seed_events(posts, clients)]
        blob = b"\n".join(lines) + b"\n"
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
        if self._status_sock is None:
            self._status_sock = self.ctx.socket(zmq.DEALER)
            self._status_sock.connect(self.frontend)
        rid = uuid.uuid4().hex[:16]
        body = {"rid": rid, "op": P.OP_STATUS, "user": None, "args": {}, "server": None,
                "time": time.time()}
        self._status_sock.send_multipart(P.encode(P.REQUEST, self.lamport.tick(), body))
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not self._status_sock.poll(max(1, int(remaining * 1000))):
                break
            msg = P.decode(self._status_sock.recv_multipart())
            self.lamport.merge(msg.lamport)
            if msg.body["rid"] == rid and msg.body["ok"]:
                return msg.body["result"]
        self._status_sock.close(0)
        self._status_sock = None
        return None

    def rows(self) -> dict[int, dict]:
        status = self.status() or {"servers": []}
        return {row["id"]: row for row in status["servers"]}

    def serving(self, server_id: int) -> dict | None:
        row = self.rows().get(server_id)
        return row if row and row["alive"] and row["phase"] == "serving" else None

    def wait_serving(self, ids, timeout: float) -> None:
        ids = list(ids)

        def all_serving():
            rows = self.rows()
            return all(rows.get(i, {}).get("alive") and rows[i].get("phase") == "serving"
                       for i in ids)
        wait_until(all_serving, timeout, interval=0.1, what=f"servers {ids} serving")

    def stop(self) -> None:
        try:
            self.group.stop_all(timeout=1.5)
        finally:
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


# --- replication lag: watching the bus ---------------------------------------------------
class BusWatch:
    """Subscribes to EVENT and ACK on the bus and notes, per origin, when every server's
    ACK version vector covered each sequence number (BEAT only proves the subscription).

    A thread of its own owns the SUB socket and stamps each message as it arrives, so
    the orchestrator's waiting never delays a stamp; a lock guards what it records."""

    def __init__(self, cluster: BenchCluster, server_ids) -> None:
        self.ctx = cluster.ctx
        self.endpoint = cluster.config.endpoint(cluster.config.bus_out_port)
        self.server_ids = list(server_ids)
        self.where: dict[str, tuple[int, int]] = {}             # event id -> (origin, seq)
        self.vv: dict[int, dict[int, int]] = {s: {} for s in self.server_ids}
        self.covered: dict[int, tuple[list[int], list[float]]] = {}   # origin -> seqs, times
        self.beats: set[int] = set()
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._run, name="bus-watch", daemon=True)

    def start(self, timeout: float = 5.0) -> None:
        """Subscribe, and wait until a BEAT of every server got through (slow joiner)."""
        self.thread.start()
        wait_until(lambda: self.beats >= set(self.server_ids), timeout, interval=0.02,
                   what="bus subscription live")

    def _run(self) -> None:
        sock = self.ctx.socket(zmq.SUB)
        sock.rcvhwm = 0
        for topic in (P.EVENT, P.ACK, P.BEAT):
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        sock.connect(self.endpoint)
        try:
            while self.running:
                if sock.poll(100):
                    self.on_message(P.decode(sock.recv_multipart()), time.monotonic())
        finally:
            sock.close(0)

    def on_message(self, msg: P.Message, now: float) -> None:
        with self.lock:
            if msg.type == P.EVENT:
                for event in msg.body["events"]:
                    self.where[event["id"]] = (event["origin"], event["seq"])
            elif msg.type == P.ACK:
                self.on_ack(msg.body["from"], P.parse_vv(msg.body["vv"]), now)
            elif msg.type == P.BEAT:
                self.beats.add(msg.body["from"])

    def on_ack(self, sender: int, vv: dict[int, int], now: float) -> None:
        if sender not in self.vv:
            return
        self.vv[sender] = vv
        for origin in vv:
            everywhere = min(self.vv[s].get(origin, 0) for s in self.server_ids)
            seqs, times = self.covered.setdefault(origin, ([], []))
            if not seqs or everywhere > seqs[-1]:
                seqs.append(everywhere)
                times.append(now)

    def held_everywhere_at(self, event_id: str) -> float | None:
        if event_id not in self.where:
            return None
        origin, seq = self.where[event_id]
        seqs, times = self.covered.get(origin, ([], []))
        i = bisect_left(seqs, seq)
        return times[i] if i < len(seqs) else None

    def lags(self, acks: list[tuple[str, float]]) -> tuple[list[float], int]:
        """(lag in seconds of each acked write, writes not yet held everywhere)."""
        lags, missing = [], 0
        with self.lock:
            for rid, acked_at in acks:
                held = self.held_everywhere_at(rid)
                if held is None:
                    missing += 1
                else:
                    lags.append(max(0.0, held - acked_at))
        return lags, missing

    def stop(self) -> None:
        self.running = False
        self.thread.join(2.0)


# --- the run ----------------------------------------------------------------------------------
class Bench:
    STEPS = 11

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
    def cluster(self, name: str) -> BenchCluster:
        return BenchCluster(self.root / name)

    def start_cluster(self, cluster: BenchCluster, servers: int, echo: bool = False,
                      stored: int = 0) -> None:
        began = time.monotonic()
        kind = "echo servers" if echo else "servers"
        if stored:
            events = cluster.seed(range(1, servers + 1), stored, self.plan.clients)
        cluster.start(servers, echo, self.plan.start_timeout)
        if stored:
            cluster.wait_folded(range(1, servers + 1), self.plan.start_timeout)
        what = f", {stored:,} posts stored ({events:,} events)" if stored else ""
        self.note(f"cluster: broker + {servers} {kind}{what} on port {cluster.config.port_base}, "
                  f"serving after {time.monotonic() - began:.1f} s")

    def load(self, cluster: BenchCluster, op: str, args_of, clients: int | None = None,
             rate: float | None = None, record_acks: bool = False, setup=()) -> LoadResult:
        """Run ``op`` from ``clients`` workers (``args_of(worker)`` gives its args)."""
        clients = clients or self.plan.clients
        per_worker = rate / clients if rate else None
        loads = [Load(cluster.frontend, bench_user(w), op, args_of(w), per_worker, record_acks,
                      tuple(setup) + ((op, args_of(w)),)) for w in range(clients)]
        result = self.workers.run(loads, self.plan.phase_s)
        if result.errors:
            self.note(f"errors: {dict(result.errors)}")
        self.figures.setdefault("errors", {}).update(
            {f"{self.step_no}:{op}:{code}": n for code, n in result.errors.items()})
        if not result.latencies:
            raise BenchError(f"no {op} request succeeded ({dict(result.errors)})")
        return result

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
            self.attempt("growth, reads and recovery", self.large)
        finally:
            self.workers.stop()

    def baseline(self) -> None:
        cluster = self.cluster("baseline")
        try:
            self.start_cluster(cluster, 3, echo=True)
            self.step("baseline: broker + 3 echo servers, 8 clients")
            result = self.load(cluster, P.OP_POST, lambda w: {"text": TEXT})
            self.figures["baseline_rps"] = result.rate
            self.figures["baseline_p99_ms"] = result.ms(99)
            self.done(f"{result.rate:,.0f} req/s, p99 {result.ms(99):.2f} ms")
        finally:
            cluster.stop()

    def writes(self) -> None:
        cluster = self.cluster("writes")
        try:
            self.start_cluster(cluster, 3, stored=self.plan.stored_small)
            f = self.figures
            post = lambda w: {"text": TEXT}  # noqa: E731
            self.step(f"writes, 8 clients, {self.plan.stored_small:,} stored")
            result = self.load(cluster, P.OP_POST, post)
            f["posts_per_s"] = f["rate_small_store"] = result.rate
            f["p50_ms"], f["p95_ms"], f["p99_ms"] = result.ms(50), result.ms(95), result.ms(99)
            if f.get("baseline_rps"):
                f["ratio"] = result.rate / f["baseline_rps"]
            self.done(f"{result.rate:,.0f} posts/s, p50 {f['p50_ms']:.2f} ms, "
                      f"p95 {f['p95_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms")

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

            self.replication_lag(cluster, half)
        finally:
            cluster.stop()

    def replication_lag(self, cluster: BenchCluster, rate: float) -> None:
        cluster.group.start_server(4)
        cluster.wait_serving([4], self.plan.start_timeout)
        self.step(f"replication lag, 4 servers (3 replicas), {rate:,.0f} posts/s")
        watch = BusWatch(cluster, range(1, 5))
        try:
            watch.start()
            result = self.load(cluster, P.OP_POST, lambda w: {"text": TEXT}, rate=rate,
                               record_acks=True)
            try:
                wait_until(lambda: watch.lags(result.acks)[1] == 0, LAG_DRAIN_S, interval=0.05,
                           what="every acked write on every server")
            except TimeoutError:
                pass                                  # reported as replication_unresolved
            lags, missing = watch.lags(result.acks)
        finally:
            watch.stop()
        if not lags:
            raise BenchError(f"no acked write was seen on all 4 servers ({missing} missing)")
        p50, p99 = percentile(lags, 50) * 1000, percentile(lags, 99) * 1000
        self.figures["replication_lag_ms"] = {"p50": p50, "p99": p99}
        self.figures["replication_lag_load_per_s"] = result.rate
        self.figures["replication_unresolved"] = missing
        self.done(f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
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
        cluster.group.start_server(4)
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
            rows = {r["id"]: r for r in status["servers"]}
            if not rows.get(victim, {}).get("alive", False):
                seen.setdefault("residency", now)
            return len(seen) == 2
        wait_until(recovered, 20.0, interval=0.02, what="a new coordinator and the victim out of the pool")
        self.figures["failover_s"] = seen["failover"] - killed_at
        self.figures["pool_residency_s"] = seen["residency"] - killed_at
        self.figures["killed_coordinator"] = victim
        self.done(f"server {victim} killed: new coordinator after "
                  f"{self.figures['failover_s']:.2f} s, out of the pool after "
                  f"{self.figures['pool_residency_s']:.2f} s")


# --- report --------------------------------------------------------------------------------------
def table_rows(f: dict) -> list[tuple[str, str, str]]:
    def num(key, fmt="{:,.0f}", unit=""):
        value = f.get(key)
        return "—" if value is None else fmt.format(value) + unit
    lag = f.get("replication_lag_ms") or {}
    lag_text = (f"{lag['p50']:.2f} / {lag['p99']:.2f} ms" if lag else "—")
    return [
        ("baseline: echo servers, 8 clients", num("baseline_rps", unit=" req/s"), ""),
        ("acked posts, 8 clients", num("posts_per_s", unit=" /s"), TARGETS["posts_per_s"]),
        ("ratio to baseline", num("ratio", "{:.2f}"), TARGETS["ratio"]),
        ("latency p50 / p95 / p99",
         f"{num('p50_ms', '{:.2f}')} / {num('p95_ms', '{:.2f}')} / {num('p99_ms', '{:.2f}')} ms", ""),
        ("acked posts, 1 client", num("posts_per_s_1_client", unit=" /s"), ""),
        ("direct messages, 8 clients", num("dms_per_s", unit=" /s"), ""),
        ("p99 at half load", num("p99_half_load_ms", "{:.2f}", " ms"), TARGETS["p99_half_load_ms"]),
        ("writes at 1k / large store",
         f"{num('rate_small_store')} / {num('rate_large_store')} /s", ""),
        ("growth ratio", num("growth_ratio", "{:.2f}"), TARGETS["growth_ratio"]),
        ("feed reads", f"{num('feed_rps', unit=' req/s')}, p99 {num('feed_p99_ms', '{:.2f}', ' ms')}",
         TARGETS["feed_p99_ms"]),
        ("chat reads", f"{num('chat_rps', unit=' req/s')}, p99 {num('chat_p99_ms', '{:.2f}', ' ms')}", ""),
        ("replication lag p50 / p99", lag_text, ""),
        ("catch-up of a new server", f"{num('catchup_s', '{:.2f}', ' s')} "
                                     f"({num('catchup_events')} events)", TARGETS["catchup_s"]),
        ("new coordinator after kill", num("failover_s", "{:.2f}", " s"), TARGETS["failover_s"]),
        ("killed server left in pool", num("pool_residency_s", "{:.2f}", " s"), ""),
    ]


def print_table(f: dict) -> None:
    rows = [("figure", "value", "target")] + table_rows(f)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def run_bench(quick: bool = False, out: Path = Path("bench.json")) -> int:
    """Run every phase, print the table, write the JSON; 0 if every phase was measured."""
    plan = QUICK if quick else FULL
    root = Path(tempfile.mkdtemp(prefix="social-bench-"))
    began = time.monotonic()
    bench = Bench(plan, root)
    print(f"benchmark ({'quick' if quick else 'full'}): {plan.phase_s:g} s per phase, "
          f"{plan.clients} client processes, {os.cpu_count()} CPUs; clusters in {root}", flush=True)
    completed = False
    try:
        bench.run()
        completed = not bench.failures
    finally:
        figures = {**bench.figures,
                   "cpus": os.cpu_count(), "python": platform.python_version(),
                   "platform": platform.platform(),
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "quick": quick, "phase_s": plan.phase_s, "clients": plan.clients,
                   "stored_small": plan.stored_small, "stored_large": plan.stored_large,
                   "replicas": bench.config.replicas, "fsync": bench.config.fsync,
                   "seconds": round(time.monotonic() - began, 1), "failures": bench.failures}
        Path(out).write_text(json.dumps(figures, indent=2) + "\n")
        if completed:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs kept in {root}/*/logs", flush=True)
    print()
    print_table(figures)
    print(f"\n{figures['seconds']} s; figures written to {out}"
          + (f"; {len(bench.failures)} phase(s) FAILED" if bench.failures else ""))
    return 1 if bench.failures else 0
