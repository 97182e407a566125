"""The benchmark's HTTP phase: acked posts through the web gateway (``web/``).

A gateway process is started in the bench cluster's group; ``clients`` spawned
worker processes each sign a user in over HTTP (``http.client``, outside the
window) and then ``POST /api/post`` on one keep-alive HTTP/1.1 connection
(``KeepAlive``: the same request bytes written on a plain socket each time, and
only the status line and Content-Length of the answer read, so the load generator,
which shares the machine's cores with the gateway, costs a fraction of what
``http.client``'s header parsing did), flat out or on a fixed schedule, counting the
200s that arrive inside one shared window on the system-wide monotonic clock.
Paced latency is measured from the scheduled send time, as in
``clients/bench/load.py`` (no coordinated omission). Each worker also reports the
CPU time it used inside the window (``LoadResult.client_cpu_s``, the sum).
"""
from __future__ import annotations

import gc
import http.client
import json
import multiprocessing as mp
import queue
import socket
import time
from collections import Counter

from clients.bench.load import START_LEAD, BenchError, LoadResult, send_times
from common.processes import ProcessGroup

REPLY_TIMEOUT = 5.0
HEADERS = {"Content-Type": "application/json", "X-Requested-With": "bench"}


def sign_in(conn: http.client.HTTPConnection, user: str, password: str) -> str:
    """The session cookie of ``user`` (registered first if need be)."""
    body = json.dumps({"user": user, "password": password})
    for path in ("/api/login", "/api/register"):
        conn.request("POST", path, body, HEADERS)
        reply = conn.getresponse()
        reply.read()
        if reply.status == 200:
            return reply.getheader("set-cookie").split(";", 1)[0]
    raise BenchError(f"{user} could not sign in over HTTP: {reply.status}")


class KeepAlive:
    """One keep-alive HTTP/1.1 connection that POSTs one prepared request again and
    again: ``post()`` is the answer's status. An answer must carry Content-Length
    (the gateway's JSON answers do); the connection is opened again after an error."""

    def __init__(self, port: int, path: str, headers: dict, body: bytes) -> None:
        self.port = port
        lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
                 f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        self.sock: socket.socket | None = None
        self.buffer = b""

    def connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=REPLY_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def post(self) -> int:
        """Send the request, read its answer; OSError if none comes, or a malformed one."""
        if self.sock is None:
            self.connect()
        try:
            self.sock.sendall(self.request)
            while (end := self.buffer.find(b"\r\n\r\n")) < 0:
                self.buffer += self.receive()
            head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4:]
            status_line, *header_lines = head.split("\r\n")
            length = next(int(line.split(":", 1)[1]) for line in header_lines
                          if line[:15].lower() == "content-length:")
            while len(self.buffer) < length:
                self.buffer += self.receive()
            self.buffer = self.buffer[length:]
            return int(status_line.split(" ", 2)[1])
        except OSError:
            self.close()
            raise
        except (ValueError, IndexError, StopIteration) as exc:
            self.close()
            raise ConnectionError(f"a malformed answer: {exc!r}") from None

    def receive(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("the gateway closed the connection")
        return data

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def worker(port: int, user: str, password: str, text: str, rate: float | None,
           offset: float, go, results) -> None:
    """Sign in, say ready, wait for the window (start, end), load it, report."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REPLY_TIMEOUT)
        cookie = sign_in(conn, user, password)
        conn.close()
        client = KeepAlive(port, "/api/post", {**HEADERS, "Cookie": cookie},
                           json.dumps({"text": text}).encode())
        client.connect()
        results.put(("ready", None, {}))
        window = go.get()
        if window is None:
            return
        start, end = window
        latencies: list[float] = []
        errors: Counter = Counter()
        while time.monotonic() < start:
            time.sleep(0.001)              # the shared window's start, not synchronization
        gc.disable()
        cpu_before = time.process_time()
        for sent in send_times(rate, start, end, offset):
            try:
                status = client.post()
            except OSError as exc:
                status = type(exc).__name__
            done = time.monotonic()
            if done > end:
                break
            if status == 200:
                latencies.append(done - sent)
            else:
                errors[str(status)] += 1
        cpu_s = time.process_time() - cpu_before
        client.close()
        results.put(("done", (latencies, cpu_s), dict(errors)))
    except Exception as exc:  # noqa: BLE001 - reported, never a hung orchestrator
        results.put(("failed", f"{type(exc).__name__}: {exc}", {}))


def run_http(port: int, users: list[str], password: str, text: str, seconds: float,
             rate: float | None = None, setup_timeout: float = 30.0, probe=None) -> LoadResult:
    """One window of ``seconds`` with one worker per user, opened once every worker
    has signed in; ``rate`` in total posts/s (None: flat out). ``probe`` is called at
    the window's start and once every worker is done; ``probed`` holds its answers;
    ``client_cpu_s`` the CPU seconds the workers used in the window."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    gos = [ctx.Queue() for _ in users]
    per_worker = rate / len(users) if rate else None
    procs = [ctx.Process(target=worker, daemon=True, name=f"bench-http-{i}",
                         args=(port, user, password, text, per_worker, i / len(users),
                               gos[i], results))
             for i, user in enumerate(users)]
    for proc in procs:
        proc.start()
    result = LoadResult(seconds)
    result.client_cpu_s = 0.0
    try:
        collect(results, len(procs), "ready", setup_timeout)
        start = time.monotonic() + START_LEAD
        for go in gos:
            go.put((start, start + seconds))
        if probe is not None:
            time.sleep(max(0.0, start - time.monotonic()))    # the window's start
            before = probe()
        for (latencies, cpu_s), errors in collect(results, len(procs), "done",
                                                  START_LEAD + seconds + 2 * REPLY_TIMEOUT + 10):
            result.latencies.extend(latencies)
            result.client_cpu_s += cpu_s
            result.errors.update(errors)
        if probe is not None:
            result.probed = (before, probe())
    finally:
        for go in gos:
            go.put(None)
        for proc in procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
    return result


def collect(results, count: int, kind: str, timeout: float) -> list:
    """``count`` reports of ``kind`` (BenchError on a failure or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    got = []
    while len(got) < count:
        try:
            what, payload, errors = results.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise BenchError(f"HTTP workers: {len(got)} of {count} {kind} within {timeout:.0f} s") from None
        if what == "failed":
            raise BenchError(f"an HTTP worker failed: {payload}")
        got.append((payload, errors))
    return got


def start_gateway(group: ProcessGroup) -> int:
    """``python -m web`` in the bench cluster's group; its port once it answers."""
    from web import local
    port = local.usable_port(0)
    local.start(group, port)
    try:
        local.wait_ready(port, alive=lambda: group.alive(local.NAME))
    except (RuntimeError, TimeoutError) as exc:
        raise BenchError(str(exc)) from None
    return port
