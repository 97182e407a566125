"""Bad input gets a clear error and changes nothing; garbage on any socket crashes nothing.

The CLI cases and the frontend frames share one cluster (module scope): each
case checks that the servers' digests are the same before and after it. The
garbage tests (raw bytes on every port, forged bus and peer traffic) get a
cluster of their own.
"""
from __future__ import annotations

import os
import socket
import struct

import pytest
import zmq

from common import protocol as P
from common.processes import wait_until
from tests.harness import Cluster

SERVERS = (1, 2, 3)
VALID_POST = {"rid": "r-0001", "op": "post", "user": "alice", "args": {"text": "hi"},
              "server": None, "time": 1.0}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One cluster for the whole module: alice and bob exist, alice has posted."""
    cluster = Cluster(tmp_path_factory.mktemp("bad-input"))
    try:
        cluster.start(3)
        cluster.wait_serving(SERVERS)
        for user in ("alice", "bob"):
            cluster.cli(user, "post", f"{user} is here")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def quiet(shared, request):
    """The shared cluster; on failure, the tail of its logs."""
    yield shared
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(shared.log_tails())


def assert_unchanged(cluster: Cluster, before: str) -> None:
    live = cluster.wait_converged()
    assert {s["digest"] for s in live.values()} == {before}, "bad input changed the state"
    assert set(live) == set(SERVERS)


def digest(cluster: Cluster) -> str:
    return next(iter(cluster.wait_converged().values()))["digest"]


# --- through the CLI ------------------------------------------------------------------------
CLI_CASES = {
    "empty text": ("alice", ["post", ""], "empty"),
    "whitespace-only text": ("alice", ["post", "  \t\n "], "empty"),
    "501-character text": ("alice", ["post", "x" * 501], "500"),
    "empty message": ("alice", ["dm", "bob", ""], "empty"),
    "501-character message": ("alice", ["dm", "bob", "é" * 501], "500"),
    "uppercase user": ("Alice", ["post", "hi"], "[a-z0-9_]"),
    "33-character user": ("a" * 33, ["post", "hi"], "[a-z0-9_]"),
    "user with a space": ("al ice", ["post", "hi"], "[a-z0-9_]"),
    "empty user name": ("", ["post", "hi"], "[a-z0-9_]"),
    "user with a slash": ("../etc", ["feed"], "[a-z0-9_]"),
    "uppercase target": ("alice", ["follow", "Bob"], "[a-z0-9_]"),
    "33-character target": ("alice", ["follow", "b" * 33], "[a-z0-9_]"),
    "target with a space": ("alice", ["dm", "b ob", "hi"], "[a-z0-9_]"),
    "following yourself": ("alice", ["follow", "alice"], "yourself"),
    "messaging yourself": ("alice", ["dm", "alice", "hi"], "yourself"),
    "following an unknown user": ("alice", ["follow", "nobody"], "unknown user"),
    "messaging an unknown user": ("alice", ["dm", "nobody", "hi"], "unknown user"),
    "unfollowing someone you do not follow": ("alice", ["unfollow", "bob"], "do not follow"),
    "unfollowing an unknown user": ("alice", ["unfollow", "nobody"], "unknown user"),
    "chat with an unknown user": ("alice", ["chat", "nobody"], "unknown user"),
    "feed limit 0": ("alice", ["feed", "--limit", "0"], "limit"),
    "feed limit 1001": ("alice", ["feed", "--limit", "1001"], "limit"),
    "chat limit -1": ("alice", ["chat", "bob", "--limit", "-1"], "limit"),
    "a new user's bad first command": ("newbie", ["post", ""], "empty"),
    "pinned to a server that does not exist": ("alice", ["users", "--server", "42"], "not serving"),
}


@pytest.mark.parametrize("user, args, expected", CLI_CASES.values(), ids=CLI_CASES.keys())
def test_bad_cli_input_gets_a_one_line_error_and_changes_nothing(quiet, user, args, expected):
    before = digest(quiet)
    done = quiet.cli(user, *args, check=False)
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert expected.lower() in lines[0].lower()
    assert_unchanged(quiet, before)


def test_a_bad_first_command_does_not_register_the_user(quiet):
    quiet.cli("newcomer", "follow", "newcomer", check=False)
    assert "newcomer" not in quiet.cli("alice", "users")["users"]


def test_text_of_exactly_500_characters_is_accepted(quiet):
    for text in ("x" * 500, "é" * 500):
        post = quiet.cli("alice", "post", text)
        assert post["post"]["text"] == text and post["replicas"] == 3


# --- raw frames on the frontend ---------------------------------------------------------------
def body(**changes) -> bytes:
    fields = {**VALID_POST, **changes}
    return P.dumps({k: v for k, v in fields.items() if v is not _MISSING})


_MISSING = object()
_REQ, _ONE = P.REQUEST.encode(), b"1"

FRAME_CASES = {
    "1 frame": [_REQ],
    "2 frames": [_REQ, _ONE],
    "5 frames": [_REQ, _ONE, body(), b"x", b"y"],
    "empty frames": [b"", b"", b""],
    "non-JSON body": [_REQ, _ONE, b"{not json"],
    "invalid UTF-8 body": [_REQ, _ONE, b"\xff\xfe\xfd"],
    "JSON array body": [_REQ, _ONE, b"[1, 2, 3]"],
    "JSON string body": [_REQ, _ONE, b'"hello"'],
    "JSON null body": [_REQ, _ONE, b"null"],
    "unknown type": [b"NOPE", _ONE, body()],
    "non-ASCII type": [b"\xffREQ", _ONE, body()],
    "a reply sent as a request": [P.REPLY.encode(), _ONE, P.dumps({"rid": "x", "ok": True,
                                                                    "server": 1, "time": 1.0})],
    "a server heartbeat on the frontend": [P.HEARTBEAT.encode(), _ONE, P.dumps({"id": 1})],
    "lamport not a number": [_REQ, b"abc", body()],
    "negative lamport": [_REQ, b"-1", body()],
    "lamport of 40 digits": [_REQ, b"9" * 40, body()],
    "missing rid": [_REQ, _ONE, body(rid=_MISSING)],
    "missing op": [_REQ, _ONE, body(op=_MISSING)],
    "missing args": [_REQ, _ONE, body(args=_MISSING)],
    "missing time": [_REQ, _ONE, body(time=_MISSING)],
    "missing text": [_REQ, _ONE, body(args={})],
    "rid is a number": [_REQ, _ONE, body(rid=5)],
    "empty rid": [_REQ, _ONE, body(rid="")],
    "rid of 65 characters": [_REQ, _ONE, body(rid="r" * 65)],
    "op is a number": [_REQ, _ONE, body(op=7)],
    "unknown op": [_REQ, _ONE, body(op="drop_everything")],
    "user is a number": [_REQ, _ONE, body(user=5)],
    "no user for a post": [_REQ, _ONE, body(user=None)],
    "uppercase user": [_REQ, _ONE, body(user="ALICE")],
    "args is a list": [_REQ, _ONE, body(args=["hi"])],
    "text is a number": [_REQ, _ONE, body(args={"text": 5})],
    "text is null": [_REQ, _ONE, body(args={"text": None})],
    "server is a string": [_REQ, _ONE, body(server="1")],
    "server is true": [_REQ, _ONE, body(server=True)],
    "server 0": [_REQ, _ONE, body(server=0)],
    "server 100": [_REQ, _ONE, body(server=100)],
    "time is a string": [_REQ, _ONE, body(time="now")],
    "limit is a string": [_REQ, _ONE, body(op="feed", args={"limit": "5"})],
    "limit is true": [_REQ, _ONE, body(op="feed", args={"limit": True})],
    "limit is a float": [_REQ, _ONE, body(op="feed", args={"limit": 2.5})],
    "follow target is a dict": [_REQ, _ONE, body(op="follow", args={"target": {}})],
    "register without a user": [_REQ, _ONE, body(op="register", user=None, args={})],
    "body over 64 KiB": [_REQ, _ONE, body(args={"text": "x" * (65 * 1024)})],
    "many frames": [_REQ] * 100,
}


@pytest.mark.parametrize("frames", FRAME_CASES.values(), ids=FRAME_CASES.keys())
def test_malformed_frames_on_the_frontend_get_an_error_reply(quiet, frames):
    before = digest(quiet)
    sock = quiet.dealer()
    try:
        reply = quiet.raw_request(sock, frames)
    finally:
        sock.close(0)
    assert reply is not None, "no reply"
    assert reply.type == P.REPLY
    assert reply.body["ok"] is False
    assert reply.body["code"] == P.ERR_BAD_REQUEST
    assert isinstance(reply.body["error"], str) and reply.body["error"]
    assert quiet.alive("broker")
    assert_unchanged(quiet, before)


def test_the_error_reply_names_the_request_it_refuses(quiet):
    sock = quiet.dealer()
    try:
        reply = quiet.raw_request(sock, [_REQ, _ONE, body(rid="mine-1", args={"text": ""})])
    finally:
        sock.close(0)
    assert reply.body["rid"] == "mine-1" and reply.body["ok"] is False
    assert "empty" in reply.body["error"]


def test_a_body_beyond_the_socket_size_limit_is_dropped_and_the_broker_stays_up(quiet):
    before = digest(quiet)
    sock = quiet.dealer()
    try:
        reply = quiet.raw_request(sock, [_REQ, _ONE, b"x" * (1024 * 1024)], timeout=2)
    finally:
        sock.close(0)
    assert reply is None or reply.body["ok"] is False
    assert quiet.alive("broker")
    assert quiet.cli("alice", "users")["users"] == ["alice", "bob"]
    assert_unchanged(quiet, before)


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
    return {k: v for k, v in {**event, **changes}.items() if v is not _MISSING}


def _bus(msg_type: str, payload: dict) -> list[bytes]:
    return [msg_type.encode(), _ONE, P.dumps(payload)]


BUS_GARBAGE = [
    [b"garbage"],
    [b"EVENT", _ONE, b"{}", b"extra", b"frames"],
    [b"EVENT", _ONE, b"not json"],
    [b"EVENT", b"x", P.dumps({"from": 2, "event": _bus_event()})],
    [b"\xff\xfe", _ONE, b"{}"],
    _bus("EVENT", {"from": "2", "event": _bus_event()}),
    _bus("EVENT", {"from": 2, "event": [1, 2]}),
    _bus("EVENT", {"from": 2, "event": {"id": "x"}}),
    _bus("EVENT", {"from": 2, "event": _bus_event(id=_MISSING)}),
    _bus("EVENT", {"from": 2, "event": _bus_event(kind="drop_table")}),
    _bus("EVENT", {"from": 2, "event": _bus_event(seq=0)}),
    _bus("EVENT", {"from": 2, "event": _bus_event(origin=-1)}),
    _bus("EVENT", {"from": 2, "event": _bus_event(lamport="5")}),
    _bus("EVENT", {"from": 2, "event": _bus_event(data={})}),
    _bus("EVENT", {"from": 2, "event": _bus_event(data={"text": 5})}),
    _bus("EVENT", {"from": 2, "event": _bus_event(kind="seen", data={"shown": [1, 2]})}),
    _bus("EVENT", {"from": 2, "event": _bus_event(kind="seen", data={"shown": "ab"})}),
    _bus("ACK", {"from": 2, "vv": {"a": 1}}),
    _bus("ACK", {"from": 2, "vv": {"1": "x"}}),
    _bus("ACK", {"from": 2, "vv": {"1": -4}}),
    _bus("ACK", {"from": 2, "vv": {"1": 2.5}}),
    _bus("ACK", {"from": 2, "vv": [1, 2]}),
    _bus("ACK", {"from": 2}),
    _bus("BEAT", {"from": 3, "phase": "serving", "vv": {"x": "y"}, "epoch": 1,
                  "coordinator": None}),
    _bus("BEAT", {"from": 3, "phase": "serving", "vv": {"3": None}, "epoch": 1,
                  "coordinator": 3}),
    _bus("BEAT", {"from": 3, "phase": 5, "vv": {}, "epoch": 1, "coordinator": None}),
    _bus("BEAT", {"from": 3}),
    _bus("BYE", {"from": "3"}),
]
BUS_SENTINEL = [b"SENTINEL-ZZ", _ONE, b"{}"]
"""An unknown type: once a server logs it, it has read every message sent before it."""


def test_garbage_and_invalid_messages_on_the_bus_crash_nothing(own):
    c = own
    before = digest(c)
    pub = c._ctx.socket(zmq.PUB)
    pub.linger = 0
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
    return P.dumps({k: v for k, v in fields.items() if v is not _MISSING})


_FETCH = P.FETCH.encode()
PEER_GARBAGE = [
    [b"x"],
    [_FETCH, _ONE],
    [_FETCH, _ONE, _fetch(), b"extra"],
    [_FETCH, _ONE, b"not json"],
    [_FETCH, b"-1", _fetch()],
    [b"EVENTS", _ONE, P.dumps({"from": 2, "events": [], "vv": {}, "more": False})],
    [_FETCH, _ONE, _fetch(after={"x": 1})],
    [_FETCH, _ONE, _fetch(after={"1": -1})],
    [_FETCH, _ONE, _fetch(after={"1": "3"})],
    [_FETCH, _ONE, _fetch(after=[1])],
    [_FETCH, _ONE, _fetch(after=_MISSING)],
    [_FETCH, _ONE, _fetch(limit="10")],
    [_FETCH, _ONE, _fetch(limit=None)],
    [_FETCH, _ONE, _fetch(limit=_MISSING)],
    [_FETCH, _ONE, _fetch(**{"from": "me"})],
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
        probe = c.raw_request(sock, [_FETCH, _ONE, _fetch(after=everything)])
        assert probe is not None and probe.type == P.EVENTS
        assert len(probe.body["events"]) == total and probe.body["more"] is False
        # odd but well-formed requests get a well-formed answer
        for odd in (_fetch(limit=-5), _fetch(limit=2 ** 62), _fetch(after={"1": 2 ** 62}),
                    _fetch(after={"77": 3})):
            reply = c.raw_request(sock, [_FETCH, _ONE, odd])
            assert reply is not None and reply.type == P.EVENTS
    finally:
        sock.close(0)
    assert all(c.alive(name) for name in c.names())
    assert_unchanged(c, before)


BACKEND_GARBAGE = [
    [b"x"],
    [b"", b"HB", _ONE],
    [b"", b"HB", b"x", P.dumps({"id": None})],
    [b"", b"HB", _ONE, b"[]"],
    [b"", b"READY", _ONE, P.dumps({"id": "1"})],
    [b"", b"NOPE", _ONE, b"{}"],
    [b"", b"REQ", _ONE, body()],                           # a request has no place here
    [b"someone", b"REQ", _ONE, body()],                    # only replies go to clients
    [b"", b"LEAVE", _ONE, P.dumps({"id": 1})],             # not server 1's socket
    [b"", b"HB", _ONE, P.dumps({"id": None, "phase": 7})],
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
    """Heartbeat bodies are stored as they come and shown by ``status``: a non-number
    epoch must not break the broker's choice of the current coordinator."""
    c = own
    sock = c.dealer(c.config.backend_port)
    try:
        sock.send_multipart([b""] + P.encode(P.HEARTBEAT, 1, {"id": 60, "epoch": "x",
                                                               "coordinator": [1]}))
        wait_until(lambda: 60 in c.servers() or not c.alive("broker"), timeout=5,
                   what="the broker to read the heartbeat")
    finally:
        sock.close(0)
    assert c.alive("broker")
    assert c.status() is not None
    assert c.cli("alice", "post", "after the odd heartbeat")["replicas"] == 3


def test_a_huge_lamport_stamp_from_a_client_does_not_stop_the_cluster(own):
    """The largest stamp ``decode`` accepts (18 digits) must not push any clock past
    what ``decode`` accepts: every message after it would be dropped as malformed."""
    c = own
    sock = c.dealer()
    try:
        status = {"rid": "huge-lamport", "op": P.OP_STATUS, "user": None, "args": {},
                  "server": None, "time": 1.0}
        sock.send_multipart([_REQ, b"9" * 18, P.dumps(status)])
        assert sock.poll(5000), "no reply"
        P.decode(sock.recv_multipart())         # the reply's own stamp must be readable
    finally:
        sock.close(0)
    done = c.cli("alice", "--timeout", "6", "post", "after the huge stamp", check=False)
    assert done.returncode == 0, done.stderr
    assert c.alive("broker") and all(c.alive(f"server-{i}") for i in SERVERS)
