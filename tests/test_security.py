"""CurveZMQ (issue 12), tried as an outsider and as a rogue member, with real processes.

* A plain (non-CURVE) socket on each port, and a CURVE socket whose key is in no
  allowlist on each ironhouse port, receives nothing, and what it sends changes
  nothing: same digests, same pool, same coordinator and epoch, same clocks. How
  long "nothing" is watched for is never a timer: a trusted socket opened beside it
  sends or waits for the same thing, and once that one is served or has heard it,
  the stranger would have been too.
* A member with a valid key (server 4's) speaking as server 2 is refused, with a log line.
* ``run_all.py admit 4 KEY`` lets a server with that key (on "another host": a data
  folder of its own) join without a restart of anything.
* Loopback traffic captured as root while a DM is sent and read never holds its text.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket as so
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import zmq

from common import keys
from common.processes import ROOT, ProcessGroup, wait_until
from tests.harness import FAST_TIMING, PASSWORD, TRUSTED, Cluster
from tests.hostile_helpers import (SERVERS, BusForger, LogMark, answering_status,
                                   assert_cluster_healthy, converged_digest, frames, heartbeat,
                                   request, rows, socket)

PORTS = ("frontend", "backend", "bus-in", "bus-out", "peer-1")
IRONHOUSE = ("backend", "bus-in", "bus-out", "peer-1")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("security"))
    try:
        cluster.start(3)
        cluster.wait_serving(SERVERS, timeout=20)
        wait_until(lambda: (answering_status(cluster) or {}).get("coordinator") == 3, 15,
                   interval=0.1, what="server 3 coordinator")
        yield cluster
    finally:
        cluster.stop()


def port_of(cluster: Cluster, where: str) -> int:
    cfg = cluster.config
    return {"frontend": cfg.frontend_port, "backend": cfg.backend_port,
            "bus-in": cfg.bus_in_port, "bus-out": cfg.bus_out_port,
            "peer-1": cfg.peer_port(1)}[where]


def outsider(cluster: Cluster, kind: int, where: str, key: str) -> zmq.Socket:
    """A socket on ``where``: ``plain`` (no CURVE at all) or ``stranger`` (CURVE, with
    the right server key, but its own key in no allowlist)."""
    options = {} if key == "plain" else cluster.curve_options(
        "stranger", peer=1 if where == "peer-1" else None)
    if kind == zmq.SUB:
        options["subscribe"] = b""
    if where == "backend":
        options["identity"] = b"server-2"        # and it says it is server 2
    sock = socket(kind, cluster.config.endpoint(port_of(cluster, where)), **options)
    sock.sndtimeo = OUTSIDER_SEND_MS
    return sock


OUTSIDER_SEND_MS = 2000
"""How long an outsider's send may wait for a connection to carry it. A refused
handshake can leave its DEALER with no connection at all, where a send waits
forever; then what it tried to say never left it, which is what the test wants."""


def offer(bad: zmq.Socket, msg: list[bytes]) -> None:
    """The outsider says ``msg``, if its socket can carry it at all."""
    try:
        bad.send_multipart(msg)
    except zmq.Again:
        pass


def snapshot(cluster: Cluster) -> dict:
    status = answering_status(cluster)
    live = {i: r for i, r in rows(status).items() if r.get("alive")}
    return {"pool": sorted(i for i, r in live.items() if r.get("phase") == "serving"),
            "servers": sorted(rows(status)), "coordinator": status["coordinator"],
            "epoch": status["epoch"], "requests": status["broker"]["requests"]}


def skews_ms(cluster: Cluster) -> list[float]:
    return [abs(r.get("clock_skew_ms") or 0.0) for r in rows(answering_status(cluster)).values()
            if r.get("alive")]


def forged_bus_messages(marker: str) -> list[list[bytes]]:
    """What a forger would say on the bus: an event by mallory, a takeover, a clock +1 h."""
    event = {"id": f"forged-{marker}", "kind": "post", "user": "mallory", "lamport": 5,
             "ts": 1.0, "origin": 9, "seq": 1, "data": {"text": marker}}
    return [frames("EVENT", {"from": 9, "events": [event], "vv": {"9": 1}}),
            frames("COORDINATOR", {"from": 9, "epoch": 10 ** 6 + 9}),
            frames("TIME_ADJUST", {"from": 3, "epoch": 10 ** 6 + 9, "round": 1,
                                   "corrections": {"1": 3600.0, "2": 3600.0, "3": 3600.0}})]


def _frontend(cluster: Cluster, bad: zmq.Socket, good: zmq.Socket, marker: str) -> None:
    offer(bad, frames("REQ", request("post", "mallory", {"text": marker})))
    reply = cluster.raw_request(good, frames("REQ", request("status", None, {})))
    assert reply is not None, "the trusted client got no reply"
    assert not bad.poll(0), "the outsider got a reply"


def _backend(cluster: Cluster, bad: zmq.Socket, good: zmq.Socket, marker: str) -> None:
    mark = LogMark(cluster, ["broker"])
    for msg in (frames("READY", {"id": 9}), frames("LEAVE", {"id": 2}),
                frames("HB", heartbeat(9, coordinator=9, epoch=10 ** 6 + 9))):
        offer(bad, [b""] + msg)
    # the trusted socket's probe (an unknown type) is logged once it is read
    wait_until(lambda: good.send_multipart([b"", marker.encode(), b"1", b"{}"])
               or marker in mark.new_text("broker"), 10, interval=0.1,
               what="the broker to read a trusted probe")
    assert not bad.poll(0), "the outsider got a message from the broker"


def _bus_in(cluster: Cluster, bad: zmq.Socket, good: BusForger, marker: str) -> None:
    for _ in range(3):                   # the trusted forger's probe reaches every server
        for msg in forged_bus_messages(marker):
            offer(bad, msg)
        good.probe()


def _bus_out(cluster: Cluster, bad: zmq.Socket, good: zmq.Socket, marker: str) -> None:
    def trusted_heard_it() -> bool:
        """Post, then read the bus for a second. A post made before our subscription
        reached the publishers is never delivered to us, and the bus is never quiet
        (BEATs), so each try reads for a bounded time, then posts again."""
        cluster.request("alice", "post", {"text": f"{marker} heard by members"})
        until = time.monotonic() + 1.0
        while (left := until - time.monotonic()) > 0 and good.poll(int(left * 1000) + 1):
            if marker.encode() in b"".join(good.recv_multipart()):
                return True
        return False
    wait_until(trusted_heard_it, 15, interval=0.1, what="a trusted SUB to hear the post")
    assert not bad.poll(0), "the outsider heard the bus"


def _peer(cluster: Cluster, bad: zmq.Socket, good: zmq.Socket, marker: str) -> None:
    mark = LogMark(cluster, ["server-1"])
    offer(bad, frames("FETCH", {"from": 2, "after": {}, "limit": 10}))
    offer(bad, frames("ACK", {"from": 2, "vv": {"1": 10 ** 6}}))
    reply = cluster.raw_request(good, frames("FETCH", {"from": 99, "after": {}, "limit": 10}))
    assert reply is not None and reply.type == "EVENTS", "the trusted FETCH got no answer"
    assert not bad.poll(0), "the outsider got an answer"
    assert "server-2" not in mark.new_text("server-1"), "server 1 served the outsider"


def try_port(cluster: Cluster, where: str, key: str, marker: str) -> None:
    """Send (or listen) on ``where`` as an outsider, and prove by a trusted socket beside
    it that what it did had every chance to arrive."""
    cfg = cluster.config
    kind, good, attempt = {
        "frontend": (zmq.DEALER, lambda: cluster.dealer(), _frontend),
        "backend": (zmq.DEALER, lambda: cluster.dealer(cfg.backend_port), _backend),
        "bus-in": (zmq.PUB, lambda: BusForger(cluster), _bus_in),
        "bus-out": (zmq.SUB, lambda: socket(zmq.SUB, cfg.endpoint(cfg.bus_out_port),
                                            subscribe=b"", **cluster.curve_options(TRUSTED)),
                    _bus_out),
        "peer-1": (zmq.DEALER, lambda: cluster.dealer(cfg.peer_port(1)), _peer)}[where]
    bad = outsider(cluster, kind, where, key)
    try:
        good = good()
        try:
            attempt(cluster, bad, good, marker)
        finally:
            good.close() if isinstance(good, BusForger) else good.close(0)
    finally:
        bad.close(0)


CASES = [(where, "plain") for where in PORTS] + [(where, "stranger") for where in IRONHOUSE]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where, key", CASES, ids=[f"{k}-{w}" for w, k in CASES])
def test_an_outsider_on_any_port_gets_nothing_and_changes_nothing(shared, where, key):
    c = shared
    digest = converged_digest(c)
    before = snapshot(c)
    mark = LogMark(c, ["broker"] + [f"server-{i}" for i in SERVERS])
    marker = f"OUTSIDER{uuid.uuid4().hex[:10]}"
    try_port(c, where, key, marker)
    wrote = where in ("bus-out",)                  # the trusted side's DM
    assert_cluster_healthy(c, None if wrote else digest)
    after = snapshot(c)
    for name in ("pool", "servers", "coordinator", "epoch"):
        assert after[name] == before[name], f"{name}: {before[name]} -> {after[name]}"
    assert max(skews_ms(c)) < 2500, f"a clock moved: {skews_ms(c)}"
    assert "mallory" not in c.request("checker", "users", {})["users"]
    if not wrote:                                # else the trusted side's post names it
        read = [line for line in mark.new_lines()
                if marker in line and "unknown message type" not in line]
        assert not read, f"the outsider's message was read: {read[:3]}"
    if key == "stranger":                        # refused in the handshake, said once
        receiver = "server-1" if where == "peer-1" else "broker"
        wait_until(lambda: "not in the allowlist" in mark.new_text(receiver), 5, interval=0.1,
                   what=f"{receiver} to log the refused key")


# --- a member speaking for another ---------------------------------------------------------
@pytest.mark.timeout(120)
def test_a_member_with_server_4s_key_cannot_speak_as_server_2_to_the_broker(shared):
    c = shared
    digest = converged_digest(c)
    before = snapshot(c)
    mark = LogMark(c, ["broker"])
    options = c.curve_options("server-4")         # a valid, allowlisted key: server 4's
    endpoint = c.config.endpoint(c.config.backend_port)
    as_two = socket(zmq.DEALER, endpoint, identity=b"server-2", **options)
    says_two = socket(zmq.DEALER, endpoint, identity=b"server-4", **options)
    try:
        def both_refused() -> bool:
            as_two.send_multipart([b""] + frames("READY", {"id": 2}))
            says_two.send_multipart([b""] + frames("HB", heartbeat(2, coordinator=9,
                                                                   epoch=10 ** 6 + 9)))
            text = mark.new_text("broker")
            return ("dropped READY claiming identity b'server-2', id 2: its connection's key "
                    "is server-4's" in text and
                    "dropped HB claiming identity b'server-4', id 2: its connection's key "
                    "is server-4's" in text)
        wait_until(both_refused, 10, interval=0.2, what="the broker to refuse both")
    finally:
        as_two.close(0)
        says_two.close(0)
    assert_cluster_healthy(c, digest)
    after = snapshot(c)
    assert 4 not in after["servers"]
    for name in ("pool", "coordinator", "epoch"):
        assert after[name] == before[name], f"{name}: {before[name]} -> {after[name]}"
    lines = mark.new_text("broker").splitlines()
    assert len([line for line in lines if "claiming identity b'server-2'" in line]) == 1, \
        "one line for the impostor, however often it spoke"


@pytest.mark.timeout(120)
def test_a_member_with_server_4s_key_cannot_fetch_as_server_2_from_a_peer(shared):
    c = shared
    mark = LogMark(c, ["server-1"])
    sock = c.dealer(c.config.peer_port(1), key="server-4")
    try:
        sock.send_multipart(frames("FETCH", {"from": 2, "after": {}, "limit": 10}))
        sock.send_multipart(frames("ACK", {"from": 2, "vv": {"1": 10 ** 6}}))
        # the same connection's next question, in its own name, is answered: so the
        # first two were read, and refused
        reply = c.raw_request(sock, frames("FETCH", {"from": 4, "after": {}, "limit": 10}))
    finally:
        sock.close(0)
    assert reply is not None and reply.type == "EVENTS" and reply.body["from"] == 1
    text = mark.new_text("server-1")
    assert "dropped FETCH from server-2: its connection's key is server-4's" in text
    assert "dropped ACK from server-2: its connection's key is server-4's" in text
    assert_cluster_healthy(c)


# --- admit -------------------------------------------------------------------------------------
def run_all(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_all.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.timeout(150)
def test_admit_lets_a_server_of_another_host_join_without_a_restart(cluster, tmp_path):
    """Server 4 runs on "host B": a data folder of its own, the broker's key from
    SOCIAL_BROKER_KEY, its peers' keys admitted there from their key files. Refused
    until ``run_all.py admit 4 KEY`` on the cluster's host; then it joins, and nothing
    was restarted."""
    c = cluster
    c.start(3)
    c.wait_serving(SERVERS, timeout=20)
    pids = {name: c.group.pid(name) for name in c.names()}
    host_a = c.config.data_dir
    host_b = str(tmp_path / "host-b" / "data")
    public, _ = keys.keypair(host_b, "server-4")   # made on host B, as server 4 would
    env = dict(c.env)
    for sid in SERVERS:                            # host B learns its peers' keys
        done = run_all("admit", str(sid), str(keys.allowed_dir(host_a) / f"server-{sid}.key"),
                       "--data-dir", host_b, env=env)
        assert done.returncode == 0, done.stderr
    remote = ProcessGroup(dataclasses.replace(c.config, data_dir=host_b),
                          {**FAST_TIMING,
                           keys.BROKER_KEY_ENV: keys.broker_public_key(host_a).decode()})
    mark = LogMark(c, ["broker", "server-1"])
    try:
        remote.start_server(4)
        wait_until(lambda: "not in the allowlist" in mark.new_text("broker"), 15,
                   interval=0.1, what="the broker to refuse server 4's key")
        assert 4 not in rows(answering_status(c))

        done = run_all("admit", "4", public.decode(), "--data-dir", host_a, env=env)
        assert done.returncode == 0, done.stderr
        assert f"admitted server-4 with key {public.decode()}" in done.stdout
        c.wait_serving({1, 2, 3, 4}, timeout=30)
        assert "re-read: 4 keys, admitted server-4" in mark.new_text("broker")
        assert "admitted server-4" in mark.new_text("server-1")
        assert {name: c.group.pid(name) for name in c.names()} == pids, "something restarted"
        post = c.request("alice", "post", {"text": "with server 4 admitted"}, server=4)
        assert post["server"] == 4
        c.wait_converged()
    finally:
        remote.stop_all()


def test_admit_refuses_a_malformed_key(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = run_all("admit", "4", "x" * 39, "--data-dir", str(tmp_path / "data"), env=env)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "40 Z85 characters" in done.stderr
    assert not (tmp_path / "data" / "keys" / "allowed" / "server-4.key").exists()


# --- what travels on loopback ------------------------------------------------------------------
ETH_P_ALL = 0x0003
CAPTURE_LIMIT = 64 * 1024 * 1024


class LoopbackCapture:
    """Every frame on ``lo``, from a raw AF_PACKET socket read on a thread (root only)."""

    def __init__(self) -> None:
        self.sock = so.socket(so.AF_PACKET, so.SOCK_RAW, so.htons(ETH_P_ALL))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.1)
        self.chunks: list[bytes] = []
        self.size = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set() and self.size < CAPTURE_LIMIT:
            try:
                chunk = self.sock.recv(65536)
            except so.timeout:
                continue
            except OSError:
                return
            self.chunks.append(chunk)
            self.size += len(chunk)

    def stop(self) -> bytes:
        self.stopping.set()
        self.thread.join(5)
        return b"".join(self.chunks)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="capturing loopback traffic needs root (a raw AF_PACKET socket)")
def test_a_dm_never_crosses_loopback_in_clear(running):
    c = running
    text = f"the-secret-{uuid.uuid4().hex}"
    control = f"in-clear-{uuid.uuid4().hex}".encode()
    capture = LoopbackCapture()
    try:
        # the capture works: bytes sent in clear over loopback are in it
        with so.create_server(("127.0.0.1", 0)) as server:
            with so.create_connection(server.getsockname()) as client:
                peer, _ = server.accept()
                with peer:
                    client.sendall(control)
                    assert peer.recv(len(control)) == control
        c.cli("alice", "users")                  # alice exists
        assert c.cli("bob", "dm", "alice", text)["replicas"] == 3
        chat = c.cli("alice", "chat", "bob")
        assert text in [m["text"] for m in chat["messages"]]
        c.wait_converged()                       # it went over the bus and the peer links
        captured = capture.stop()
    finally:
        capture.close()
    assert control in captured, "the capture saw nothing of loopback"
    assert text.encode() not in captured, "the DM's text crossed loopback in clear"
    tokens = [json.loads(c.config.client_state_path(u).read_text())["token"] for u in ("alice", "bob")]
    assert all(tokens), tokens
    for secret in tokens + [PASSWORD]:          # each logged in within the capture
        assert secret.encode() not in captured, "a token or password crossed loopback in clear"
    print(f"captured {len(captured):,} bytes on lo; the DM's text, tokens and password in none")


@pytest.mark.timeout(60)
def test_logs_data_and_keys_are_readable_by_their_owner_only(running):
    c = running
    c.cli("alice", "post", "owner only")
    c.wait_converged()
    shared = []
    for top in (Path(c.config.data_dir), Path(c.config.log_dir)):
        for path in [top, *top.rglob("*")]:
            if path.stat().st_mode & 0o077:
                shared.append(f"{path} {oct(path.stat().st_mode & 0o777)}")
    assert not shared, f"readable by others: {shared}"
