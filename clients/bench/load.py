"""The benchmark's load: worker processes, each one synchronous client, and the
maths of what they measured.

Load comes from spawned worker processes, never from the benchmark's own
interpreter. Each worker sends on one raw DEALER (``common.broker_client``), and
all of them count only the replies that arrive inside one shared window on the
system-wide monotonic clock. A paced worker sends on a fixed schedule and measures
latency from the *scheduled* send time, so a stall is not hidden by the sends it
delays (coordinated omission).
"""
from __future__ import annotations

import gc
import math
import multiprocessing as mp
import queue
import signal
import time
from collections import Counter
from dataclasses import dataclass, field, replace

import zmq

from common.broker_client import BrokerClient

REPLY_TIMEOUT = 5.0
"""Seconds a load worker waits for one reply before it counts the request lost."""
START_LEAD = 0.1
"""Seconds between "go" and the window's start, so every worker is there at the start."""


class BenchError(RuntimeError):
    """A phase that could not be measured."""


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
    password: str = ""               # log in with it before the setup (not measured)
    tag: int = 0                     # which run() this Load belongs to
    broker_key: bytes = b""          # the broker's CURVE public key (z85)
    window: int = 0                  # >0: a Pipeline (clients/pipeline.py) with this many
    port_base: int = 0               #     in flight, on the fast path of this cluster,
    linger: float = 0.0              #     its requests waiting this long for company


def call(client: BrokerClient, op: str, args: dict) -> tuple[str, bool | None, str | None]:
    """(rid, ok, error code); ok is None when no reply came within REPLY_TIMEOUT."""
    rid, reply = client.request(op, args, REPLY_TIMEOUT)
    if reply is None:
        return rid, None, "timeout"
    ok = reply["ok"]
    return rid, ok, None if ok else reply.get("code", "?")


def run_window(client: BrokerClient, load: Load, start: float, end: float,
               offset: float) -> dict:
    """Send until ``end``; count the replies that arrive inside [start, end]. The
    cyclic collector is off meanwhile: the lists growing here would otherwise make
    a full collection of the worker's own count as the cluster's latency."""
    gc.disable()
    try:
        return _run_window(client, load, start, end, offset)
    finally:
        gc.enable()


def _run_window(client: BrokerClient, load: Load, start: float, end: float,
                offset: float) -> dict:
    latencies: list[float] = []
    acks: list[tuple[str, float]] = []
    errors: Counter = Counter()
    for sent in send_times(load.rate, start, end, offset):
        rid, ok, code = call(client, load.op, load.args)
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


def run_pipelined(ctx: zmq.Context, token: str | None, load: Load, start: float,
                  end: float, offset: float) -> dict:
    """``run_window`` with ``load.window`` requests in flight on one Pipeline: flat out,
    the window kept full; paced, each request made at its slot whatever is in flight
    (up to 4 windows) and sent then, or up to ``load.linger`` later with the others
    made meanwhile; its latency from that slot."""
    from clients.pipeline import Pipeline
    from common.config import Config
    config = Config(port_base=load.port_base, host="127.0.0.1",
                    request_timeout=REPLY_TIMEOUT, request_deadline=REPLY_TIMEOUT).validate()
    pipe = Pipeline(ctx, config, load.user, load.broker_key, window=load.window, token=token,
                    linger=load.linger)
    latencies: list[float] = []
    acks: list[tuple[str, float]] = []
    errors: Counter = Counter()

    def count(done_list) -> None:
        for done in done_list:
            sent = done.issued                     # its slot, when paced
            if not start <= done.finished <= end:
                continue
            if done.ok:
                latencies.append(done.finished - sent)
                if load.record_acks:
                    acks.append((done.rid, done.finished))
            else:
                errors[done.code] += 1

    gc.disable()
    try:
        time.sleep(max(0.0, start - time.monotonic()))         # the shared window's start
        interval = 1.0 / load.rate if load.rate else 0.0
        next_at = start + offset * interval
        while (now := time.monotonic()) < end:
            if load.rate:
                # a request made with others in flight lingers: made at its slot, it
                # waits in the pipeline until then anyway, so wake only to send it
                send_at = next_at + (load.linger if pipe.pending else 0.0)
                if send_at <= now:
                    while next_at <= now and next_at < end and pipe.pending < 4 * load.window:
                        pipe.submit(load.op, load.args, issued=next_at)
                        next_at += interval
                    send_at = next_at + load.linger
                if pipe.pending >= 4 * load.window:      # behind: wait for an answer,
                    count(pipe.poll(0.05))               # never spin (the CPU is shared)
                else:
                    count(pipe.poll(max(0.0, min(send_at, end) - time.monotonic())))
            else:
                while pipe.pending < load.window:
                    pipe.submit(load.op, load.args)
                count(pipe.poll(0.05))
        count(pipe.drain(1.0))
    finally:
        gc.enable()
        pipe.close()
    return {"latencies": latencies, "acks": acks, "errors": dict(errors)}


def send_times(rate: float | None, start: float, end: float, offset: float):
    """When each request of a window is sent (monotonic): on a fixed schedule of
    ``rate`` per second from ``start`` (shifted by ``offset`` of an interval), waiting
    for each slot; or, flat out (``rate`` None), now, again and again, until ``end``."""
    interval = 1.0 / rate if rate else 0.0
    next_at = start + offset * interval
    while True:
        now = time.monotonic()
        if rate:
            if next_at >= end:
                return
            if next_at > now:
                time.sleep(next_at - now)      # pacing, not synchronization
            sent, next_at = next_at, next_at + interval
        else:
            if now >= end:
                return
            sent = now
        yield sent


def worker_main(worker: int, tasks, results) -> None:
    """A load process: for each Load, set up, report ready, wait for go (or None), run
    the window, report. Every message carries the Load's tag, so a late message from an
    aborted phase is never taken for one of the next."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the orchestrator stops us
    ctx = zmq.Context()
    ctx.linger = 0
    try:
        while (load := tasks.get()) is not None:
            client = BrokerClient(ctx, load.endpoint, load.broker_key, load.user)
            try:
                results.put(("ready", load.tag, worker, setup_problem(client, load)))
                go = tasks.get()
                if go is not None:
                    start, end, offset = go
                    if load.window:
                        part = run_pipelined(ctx, client.token, load, start, end, offset)
                    else:
                        part = run_window(client, load, start, end, offset)
                    results.put(("done", load.tag, worker, part))
            except Exception as exc:  # noqa: BLE001 - report it, never hang the orchestrator
                results.put(("failed", load.tag, worker, f"{type(exc).__name__}: {exc}"))
            finally:
                client.close()
    finally:
        ctx.destroy(0)


def setup_problem(client: BrokerClient, load: Load) -> str | None:
    """Send the setup requests; what went wrong, or None."""
    try:
        if load.password:                # accounts: a session first, outside the window
            problem = client.log_in(load.password, REPLY_TIMEOUT)
            if problem:
                return f"setup {problem}"
        for op, args in load.setup:
            _, ok, code = call(client, op, args)
            if not ok:
                return f"setup {op} as {load.user}: {code}"
    except Exception as exc:  # noqa: BLE001 - the orchestrator reports it
        return f"setup {type(exc).__name__}: {exc}"
    return None


# --- what they measured -----------------------------------------------------------------
@dataclass
class LoadResult:
    seconds: float
    latencies: list[float] = field(default_factory=list)   # seconds, every ok reply
    acks: list[tuple[str, float]] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    probed: tuple | None = None      # run(probe=...): its answers at the window's start and end

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


# --- the orchestrator's side ---------------------------------------------------------------
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

    def run(self, loads: list[Load], seconds: float, probe=None) -> LoadResult:
        """Run ``loads`` (one per worker) over one shared window of ``seconds``. A
        ``probe`` is called at the window's start and at its end; the result's
        ``probed`` holds its two answers."""
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
        probed = tuple(self._at(moment, probe) for moment in go) if probe else None
        done = self._collect("done", len(loads), seconds + REPLY_TIMEOUT + 30.0)
        result = LoadResult(seconds, probed=probed)
        for part in done.values():
            result.latencies.extend(part["latencies"])
            result.acks.extend(part["acks"])
            result.errors.update(part["errors"])
        return result

    @staticmethod
    def _at(moment: float, probe):
        """``probe()`` at ``moment`` on the monotonic clock (at once if it is past)."""
        time.sleep(max(0.0, moment - time.monotonic()))
        return probe()

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

