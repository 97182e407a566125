"""Replication lag, as the servers' bus shows it: when every server holds each write.

The benchmark subscribes to the bus of a cluster and notes, from the servers' ACK
version vectors, when every server covered each event, to compare with the time
the write was acknowledged to its client.
"""
from __future__ import annotations

import threading
import time
from bisect import bisect_left

import zmq

from clients.bench_cluster import BenchCluster
from common import protocol as P
from common.processes import wait_until


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
