"""Garbage on any socket crashes nothing: raw bytes on every port, forged bus
traffic, bad FETCH requests, bad backend messages, absurd Lamport stamps.
Each test gets a cluster of its own."""
from __future__ import annotations

import os
import socket
import struct

import pytest
import zmq

from common import protocol as P
from common.processes import wait_until
from tests import wire
from tests.harness import TRUSTED
from tests.bad_input import (MISSING, ONE, SERVERS, assert_unchanged, body, digest,
                             heartbeat)


# --- garbage on every socket ---------------------------------------------------------------------
def zmtp_greeting(mechanism: bytes = b"NULL") -> bytes:
    """A ZMTP 3.0 greeting, so the garbage that follows reaches the frame decoder."""
    return (b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + mechanism.ljust(20, b"\x00")
            + b"\x00" + b"\x00" * 31)


def zmtp_ready(socket_type: bytes) -> bytes:
    prop = b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    command = b"\x05READY" + prop
    return b"\x04" + bytes([len(command)]) + command


def garbage_streams(socket_type: bytes) -> list[bytes]:
    rng_bytes = os.urandom
    return [
        rng_bytes(4096),
        b"\x00" * 64,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        zmtp_greeting() + rng_bytes(512),
        zmtp_greeting(b"CURVE") + rng_bytes(256),
        zmtp_greeting() + zmtp_ready(socket_type) + b"\x02" + struct.pack(">Q", 2 ** 62),
        zmtp_greeting() + zmtp_ready(socket_type) + b"\x02" + struct.pack(">Q", 2 ** 40) + b"x",
        zmtp_greeting() + zmtp_ready(socket_type) + b"\x01\x05hello" + b"\x00\x03abc"
        + rng_bytes(300),
    ]


def spray(port: int, socket_type: bytes) -> None:
    for stream in garbage_streams(socket_type):
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            try:
                conn.sendall(stream)
                conn.settimeout(0.2)
                conn.recv(4096)
            except OSError:
                pass            # the peer hung up on us: as it should


@pytest.fixture
def own(cluster):
    cluster.start(3)
    cluster.wait_serving(SERVERS)
    cluster.cli("alice", "post", "before the garbage")
    cluster.cli("bob", "follow", "alice")
    return cluster


def test_random_bytes_on_every_port_crash_nothing(own):
    c = own
    cfg = c.config
    before = digest(c)
    ports = {cfg.frontend_port: b"DEALER", cfg.backend_port: b"DEALER",
             cfg.bus_in_port: b"PUB", cfg.bus_out_port: b"SUB"}
    ports.update({cfg.peer_port(i): b"DEALER" for i in SERVERS})
    lingering = [socket.create_connection(("127.0.0.1", port)) for port in ports]
    try:
        for port, kind in ports.items():
            spray(port, kind)
        assert all(c.alive(name) for name in c.names()), c.names()
        assert_unchanged(c, before)
        post = c.cli("alice", "post", "after the garbage")
        assert post["replicas"] == 3
        live = c.wait_converged()
        assert set(live) == set(SERVERS)
        assert all(c.alive(name) for name in c.names())
    finally:
        for conn in lingering:
            conn.close()


def _bus_event(**changes) -> dict:
    event = {"id": "forged-1", "kind": "post", "user": "mallory", "lamport": 5, "ts": 1.0,
             "origin": 2, "seq": 99, "data": {"text": "x"}}
    return {k: v for k, v in {**event, **changes}.items() if v is not MISSING}


def _bus(msg_type: str, payload: dict) -> list[bytes]:
    return [msg_type.encode(), ONE, P.dumps(payload)]


BUS_GARBAGE = [
    [b"garbage"],
    [b"EVENT", ONE, b"{}", b"extra", b"frames"],
    [b"EVENT", ONE, b"not json"],
    [b"EVENT", b"x", P.dumps({"from": 2, "events": [_bus_event()], "vv": {}})],
    [b"\xff\xfe", ONE, b"{}"],
    _bus("EVENT", {"from": "2", "events": [_bus_event()], "vv": {}}),
    _bus("EVENT", {"from": 2, "event": _bus_event(), "vv": {}}),
    _bus("EVENT", {"from": 2, "events": [[1, 2]], "vv": {}}),
    _bus("EVENT", {"from": 2, "events": [{"id": "x"}], "vv": {}}),
    _bus("EVENT", {"from": 2, "events": [_bus_event(id=MISSING)], "vv": {}}),
    _bus("EVENT", {"from": 2, "events": [_bus_event(kind="drop_table")], "vv": {}}),
    _bus("EVENT", {"from": 2, "events": [_bus_event(seq=0)], "vv": {}}),
    _bus("EVENT", {"from": 2, "events": [_bus_event(origin=-1)], "vv": {}}),
    _bus("EVENT", {"from": 2, "events": [_bus_event(lamport="5")], "vv": {}}),
    _bus("EVENT", {"from": 2, "events": [_bus_event(data={})], "vv": {}}),
    _bus("EVENT", {"from": 2, "events": [_bus_event(data={"text": 5})], "vv": {}}),
    _bus("EVENT", {"from": 2, "events": [_bus_event(kind="seen", data={"shown": [1, 2]})], "vv": {}}),
    _bus("EVENT", {"from": 2, "events": [_bus_event(kind="seen", data={"shown": "ab"})], "vv": {}}),
    _bus("EVENT", {"from": 2, "events": [_bus_event()], "vv": {"a": 1}}),   # all or nothing
    _bus("EVENT", {"from": 2, "events": [_bus_event()], "vv": {"1": -4}}),
    _bus("EVENT", {"from": 2, "events": [_bus_event()]}),
    _bus("ACK", {"from": 2, "vv": {"1": 2.5}}),        # ACKs go point to point, not here
    _bus("ACK", {"from": 2}),
    _bus("BEAT", {"from": 3, "phase": "serving", "vv": {"x": "y"}, "epoch": 1,
                  "coordinator": None}),
    _bus("BEAT", {"from": 3, "phase": "serving", "vv": {"3": None}, "epoch": 1,
                  "coordinator": 3}),
    _bus("BEAT", {"from": 3, "phase": 5, "vv": {}, "epoch": 1, "coordinator": None}),
    _bus("BEAT", {"from": 3}),
    _bus("BYE", {"from": "3"}),
]
BUS_SENTINEL = [b"SENTINEL-ZZ", ONE, b"{}"]
"""An unknown type: once a server logs it, it has read every message sent before it."""


def test_garbage_and_invalid_messages_on_the_bus_crash_nothing(own):
    c = own
    before = digest(c)
    pub = c._ctx.socket(zmq.PUB)
    pub.linger = 0
    for name, value in c.curve_options(TRUSTED).items():   # a buggy member of the cluster
        setattr(pub, name, value)
    pub.connect(c.config.endpoint(c.config.bus_in_port))
    logs = [f"server-{i}" for i in SERVERS]

    def seen_sentinel() -> bool:
        pub.send_multipart(BUS_SENTINEL)      # PUB drops until connected: resend until seen
        return all("SENTINEL-ZZ" in c.log_since_start(name) for name in logs)
    try:
        wait_until(seen_sentinel, timeout=5, interval=0.1, what="the bus to carry our messages")
        marks = {name: c.log_since_start(name).count("SENTINEL-ZZ") for name in logs}
        for frames in BUS_GARBAGE:
            pub.send_multipart(frames)
        pub.send_multipart(BUS_SENTINEL)
        wait_until(lambda: all(c.log_since_start(n).count("SENTINEL-ZZ") > marks[n]
                               for n in logs), timeout=5, what="every server to read the garbage")
    finally:
        pub.close(0)
    assert all(c.alive(name) for name in c.names())
    assert_unchanged(c, before)
    assert "mallory" not in c.cli("alice", "users")["users"]
    assert c.cli("alice", "post", "after the bus garbage")["replicas"] == 3
    c.wait_converged()


def _fetch(**changes) -> bytes:
    fields = {"from": 99, "after": {}, "limit": 1000, **changes}
    return P.dumps({k: v for k, v in fields.items() if v is not MISSING})


_FETCH = P.FETCH.encode()
_ACK = P.ACK.encode()
PEER_GARBAGE = [
    [b"x"],
    [_FETCH, ONE],
    [_FETCH, ONE, _fetch(), b"extra"],
    [_FETCH, ONE, b"not json"],
    [_FETCH, b"-1", _fetch()],
    [b"EVENTS", ONE, P.dumps({"from": 2, "events": [], "vv": {}, "more": False})],
    [_FETCH, ONE, _fetch(after={"x": 1})],
    [_FETCH, ONE, _fetch(after={"1": -1})],
    [_FETCH, ONE, _fetch(after={"1": "3"})],
    [_FETCH, ONE, _fetch(after=[1])],
    [_ACK, ONE, P.dumps({"from": 2, "vv": {"a": 1}})],
    [_ACK, ONE, P.dumps({"from": 2, "vv": {"1": "x"}})],
    [_ACK, ONE, P.dumps({"from": 2, "vv": {"1": -4}})],
    [_ACK, ONE, P.dumps({"from": 2, "vv": [1, 2]})],
    [_ACK, ONE, P.dumps({"from": "2", "vv": {}})],
    [_ACK, ONE, P.dumps({"from": 2})],
    [_ACK, ONE, b"{"],
    [_FETCH, ONE, _fetch(after=MISSING)],
    [_FETCH, ONE, _fetch(limit="10")],
    [_FETCH, ONE, _fetch(limit=None)],
    [_FETCH, ONE, _fetch(limit=MISSING)],
    [_FETCH, ONE, _fetch(**{"from": "me"})],
    # out of the protocol's ranges: refused, not answered
    [_FETCH, ONE, _fetch(limit=-5)],
    [_FETCH, ONE, _fetch(limit=0)],
    [_FETCH, ONE, _fetch(limit=P.FETCH_LIMIT + 1)],
    [_FETCH, ONE, _fetch(limit=2 ** 62)],
    [_FETCH, ONE, _fetch(after={"1": 2 ** 62})],
    [_FETCH, ONE, _fetch(after={"1": P.MAX_STAMP})],
    [_FETCH, ONE, _fetch(after={"0": 1})],
    [_FETCH, ONE, _fetch(after={"100": 1})],
    [_FETCH, ONE, _fetch(extra=1)],
]


def test_garbage_fetch_requests_on_a_peer_port_are_dropped(own):
    c = own
    before = digest(c)
    total = c.servers()[1]["events"]
    sock = c.dealer(c.config.peer_port(1))
    try:
        for frames in PEER_GARBAGE:
            sock.send_multipart(frames)
        # the first answer must be the one to this valid FETCH: the garbage got none
        everything = {str(i): 0 for i in SERVERS}     # every origin, from the start
        probe = c.raw_request(sock, [_FETCH, ONE, _fetch(after=everything)])
        assert probe is not None and probe.type == P.EVENTS
        assert len(probe.body["events"]) == total and probe.body["more"] is False
        # odd but well-formed requests get a well-formed answer
        for odd in (_fetch(limit=1), _fetch(limit=P.FETCH_LIMIT),
                    _fetch(after={"1": P.MAX_STAMP - 1}), _fetch(after={"77": 3})):
            reply = c.raw_request(sock, [_FETCH, ONE, odd])
            assert reply is not None and reply.type == P.EVENTS
    finally:
        sock.close(0)
    assert all(c.alive(name) for name in c.names())
    assert_unchanged(c, before)


BACKEND_GARBAGE = [
    [b"x"],
    [b"", b"HB", ONE],
    [b"", b"HB", b"x", P.dumps({"id": None})],
    [b"", b"HB", ONE, b"[]"],
    [b"", b"READY", ONE, P.dumps({"id": "1"})],
    [b"", b"NOPE", ONE, b"{}"],
    [b"", b"REQ", ONE, body()],                           # a request has no place here
    [b"someone", b"REQ", ONE, body()],                    # only replies go to clients
    [b"", b"LEAVE", ONE, P.dumps({"id": 1})],             # not server 1's socket
    [b"", b"HB", ONE, P.dumps(heartbeat(1, phase=7))],
    [b"", b"HB", ONE, P.dumps({**heartbeat(1), "phase": "serving"})],   # unknown field
    [b"a", b"b", b"c", b"d", b"e", b"f"],
]


def test_garbage_on_the_backend_crashes_nothing_and_takes_no_server_out(own):
    c = own
    sock = c.dealer(c.config.backend_port)
    try:
        for frames in BACKEND_GARBAGE:
            sock.send_multipart(frames)
        assert c.status() is not None
    finally:
        sock.close(0)
    assert c.alive("broker")
    assert set(c.serving()) == set(SERVERS)
    assert c.cli("alice", "post", "after the backend garbage")["replicas"] == 3


def test_a_heartbeat_with_wrongly_typed_fields_does_not_crash_the_broker(own):
    """Heartbeat status rows are shown by ``status`` and the broker picks the current
    coordinator from them: a row with a non-number epoch and a list for a coordinator
    must not break that choice; it is dropped (logged) and never shown."""
    c = own
    start = len(c.log_text("broker"))

    def broker_dropped_it() -> bool:
        new = c.log_text("broker")[start:].splitlines()
        return not c.alive("broker") or any("dropped" in line and "HB" in line for line in new)
    sock = c.dealer(c.config.backend_port)
    try:
        sock.send_multipart([b""] + wire.frames(P.HEARTBEAT, 1,
                                                heartbeat(60, epoch="x", coordinator=[1])))
        wait_until(broker_dropped_it, timeout=5, what="the broker to read the heartbeat")
    finally:
        sock.close(0)
    assert c.alive("broker")
    assert c.status() is not None
    assert 60 not in c.servers(), "the ill-typed heartbeat was stored"
    assert c.cli("alice", "post", "after the odd heartbeat")["replicas"] == 3


def test_a_huge_lamport_stamp_from_a_client_does_not_stop_the_cluster(own):
    """The largest stamp ``decode`` accepts (just below ``MAX_STAMP``) must not push any
    clock past what ``decode`` accepts: every message after it would be dropped as malformed."""
    c = own
    sock = c.dealer()
    try:
        status = {"rid": "huge-lamport", "op": P.OP_STATUS, "user": None, "args": {},
                  "server": None, "time": 1.0}
        sock.send_multipart(wire.frames(P.REQUEST, P.MAX_STAMP - 1, status))
        assert sock.poll(5000), "no reply"
        # the reply's own stamp must be readable, as a user's socket reads it
        P.decode(sock.recv_multipart(), P.BROKER_TO_CLIENT)
    finally:
        sock.close(0)
    done = c.cli("alice", "--timeout", "6", "post", "after the huge stamp", check=False)
    assert done.returncode == 0, done.stderr
    assert c.alive("broker") and all(c.alive(f"server-{i}") for i in SERVERS)
