"""Hostile input (issue 10), what is well-formed but does not belong: every message
type sent on every wrong socket (dropped, and logged), and requests and ACKs that are
well-formed but semantically hostile (refused as bad requests, or dropped with no
change). Afterwards every server is alive and serving, ``post``, ``feed`` and
``status`` work, and the servers' digests are equal and changed only by the writes
the test itself made through the normal API (``assert_cluster_healthy``).

The tests share one 3-server cluster (module scope, ``shared`` in
tests/hostile_helpers.py); a test that fails, or that leaves it unhealthy, gets it
replaced before the next test runs. Frames are written with plain pyzmq and json,
in the documented wire format.
"""
from __future__ import annotations

import time

import pytest

from common.processes import wait_until
from tests.harness import Cluster
from tests.hostile_helpers import (ALL_TYPES, BUS_TYPES, DROPPED, REFUSED, SERVERS, BusForger,
                                   LogMark, answering_status, assert_cluster_healthy,
                                   converged_digest, dead_processes, drop_lines_for, frames,
                                   heartbeat, pool, raw_request, request, rows, shared)


# --- 6. every message type on every wrong socket -------------------------------------------------
BELONGS = {"frontend": {"REQ"},
           "backend": {"REP", "READY", "HB", "LEAVE"},
           "bus": set(BUS_TYPES),
           "peer": {"FETCH", "ACK", "COMPARE", "RANGE"}}
"""What each socket takes; everything else sent to it must be dropped."""
WRONG_SOCKETS = ("frontend", "backend", "bus", "peer-1", "peer-2", "peer-3")


def forged_bodies(epoch: int) -> dict[str, dict]:
    """A well-formed body of every type, each of which would show if it were obeyed:
    a post or event by mallory (the digest), server 9 taking over (coordinator and
    epoch), a clock moved by 5 s (skew), a server 9 row or server 2 gone (status)."""
    takeover = (epoch // 100 + 1) * 100 + 9
    now = time.time()
    event = {"id": f"wrong-socket-{time.monotonic_ns()}", "kind": "post", "user": "mallory",
             "lamport": 5, "ts": now, "origin": 9, "seq": 1, "data": {"text": "misrouted"}}
    bodies = {
        "REQ": request("post", "mallory", {"text": "on the wrong socket"}),
        "REP": {"rid": "wrong-socket", "ok": True, "server": 1, "time": now, "result": {}},
        "REQS": {"reqs": [request("post", "mallory", {"text": "a batch on the wrong socket"})]},
        "REPS": {"reps": [{"rid": "wrong-socket-2", "ok": True, "server": 1, "time": now,
                           "result": {}}]},
        "READY": {"id": 9},
        "HB": heartbeat(9, vv={"9": 1}, coordinator=9, epoch=takeover, events=1, lamport=5,
                        peers=[1, 2, 3]),
        "LEAVE": {"id": 2},
        "EVENT": {"from": 9, "events": [event], "vv": {"9": 1}},
        "ACK": {"from": 2, "vv": {"1": 1}},
        "BEAT": {"from": 9, "phase": "serving", "vv": {"9": 1}, "epoch": takeover,
                 "coordinator": 9, "events": 1, "digest": "0123456789ab"},
        "BYE": {"from": 3},
        "ELECTION": {"from": 9, "epoch": takeover},
        "ANSWER": {"from": 9, "to": 3, "epoch": takeover},
        "COORDINATOR": {"from": 9, "epoch": takeover},
        "TIME_QUERY": {"from": 9, "epoch": takeover, "round": 1, "probe": 0},
        "TIME_REPLY": {"from": 9, "to": 3, "round": 1, "probe": 0, "time": now},
        "TIME_ADJUST": {"from": 9, "epoch": takeover, "round": 1,
                        "corrections": {"1": 5.0, "2": 5.0, "3": 5.0}},
        "FETCH": {"from": 9, "after": {}, "limit": 10},
        "EVENTS": {"from": 9, "events": [event], "vv": {"9": 1}, "more": False},
        "COMPARE": {"from": 9, "origin": 1, "lo": 0, "hi": 5, "block": 1000},
        "SUMS": {"from": 9, "origin": 1, "lo": 0, "hi": 5, "block": 1000, "sums": [12345]},
        "RANGE": {"from": 9, "origin": 1, "lo": 0, "hi": 5},
        "COPIES": {"from": 9, "origin": 1, "lo": 0, "hi": 1, "events": [event]},
    }
    assert set(bodies) == set(ALL_TYPES)
    return bodies


def test_every_forged_body_is_well_formed_for_its_type():
    """The wrong-socket test's premise: each body would be accepted on its own socket,
    so a receiver that drops it drops it for the socket, not for its shape. (The one
    place here that reads frames through ``common.protocol``: it is the judge.)"""
    from common import protocol as P
    anywhere = P.Route("anywhere", frozenset(P.MESSAGES))
    assert set(ALL_TYPES) == set(P.MESSAGES), "ALL_TYPES is not the protocol's list of types"
    for msg_type, body in forged_bodies(epoch=103).items():
        try:
            P.decode(frames(msg_type, body), anywhere)
        except P.ProtocolError as exc:
            pytest.fail(f"the forged {msg_type} is malformed: {exc}")


class WrongSocket:
    """A sender on one of the sockets, with the routing envelope that socket expects."""

    def __init__(self, cluster: Cluster, where: str) -> None:
        cfg = cluster.config
        self.kind = where.split("-")[0]
        self.forger = BusForger(cluster) if self.kind == "bus" else None
        port = {"frontend": cfg.frontend_port, "backend": cfg.backend_port}.get(self.kind)
        if self.kind == "peer":
            port = cfg.peer_port(int(where.split("-")[1]))
        self.dealer = cluster.dealer(port) if self.forger is None else None
        self.receivers = (["broker"] if self.kind in ("frontend", "backend")
                          else [f"server-{i}" for i in SERVERS] if self.kind == "bus"
                          else [f"server-{where.split('-')[1]}"])
        # the frontend refuses with a reply (and a "bad request" line); the rest drop
        self.verdict = REFUSED if self.kind == "frontend" else DROPPED

    def send(self, msg_type: str, body: dict) -> None:
        message = frames(msg_type, body)
        if self.forger is not None:
            self.forger.send(message)
        else:
            # the backend's control envelope: an empty route (not a reply to a client)
            self.dealer.send_multipart([b""] + message if self.kind == "backend" else message)

    def delivered(self) -> None:
        if self.forger is not None:
            self.forger.probe()

    def close(self) -> None:
        if self.forger is not None:
            self.forger.close()
        else:
            self.dealer.close(0)


def clock_skews_ms(status: dict) -> list[float]:
    return [abs(row.get("clock_skew_ms") or 0.0) for row in rows(status).values()
            if row.get("alive")]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("where", WRONG_SOCKETS)
def test_every_message_type_on_a_wrong_socket_is_dropped_and_logged(shared, where):
    c = shared
    digest = converged_digest(c)
    before = answering_status(c)
    wrong = [t for t in ALL_TYPES if t not in BELONGS[where.split("-")[0]]]
    bodies = forged_bodies(before["epoch"])
    sender = WrongSocket(c, where)
    mark = LogMark(c, sender.receivers)

    def every_drop_logged() -> bool:
        lines = mark.new_lines()
        return bool(dead_processes(c)) or all(drop_lines_for(lines, t, sender.verdict)
                                              for t in wrong)
    try:
        for msg_type in wrong:
            sender.send(msg_type, bodies[msg_type])
        sender.delivered()
        try:
            wait_until(every_drop_logged, 5, interval=0.1, what="a drop line per type")
        except TimeoutError:
            pass                                 # reported below, after the health check
    finally:
        sender.close()
    assert_cluster_healthy(c, digest)
    after = answering_status(c)
    assert set(rows(after)) == set(SERVERS), f"servers in status: {sorted(rows(after))}"
    assert (after["coordinator"], after["epoch"]) == (before["coordinator"], before["epoch"])
    assert max(clock_skews_ms(after)) < 2500, f"a clock moved: {clock_skews_ms(after)}"
    lines = mark.new_lines()
    unlogged = [t for t in wrong if not drop_lines_for(lines, t, sender.verdict)]
    assert not unlogged, (f"no log line of {sender.receivers} says it dropped {unlogged} "
                          f"sent on the {where} (looked for /{sender.verdict.pattern}/)")


# --- 7. well-formed but semantically hostile -----------------------------------------------------
HOSTILE_REQUESTS = {
    "text with a NUL": ("post", "mallory", {"text": "hello\x00world"}, None),
    "text with terminal escapes": ("post", "mallory", {"text": "\x1b[2J\x1b[31mred alert"}, None),
    "text with a right-to-left override": ("post", "mallory", {"text": "invoice\u202efdp.exe"},
                                           None),
    "33-character user name": ("post", "m" * 33, {"text": "hi"}, None),
    "server 0": ("users", "mallory", {}, 0),
    "server 100": ("users", "mallory", {}, 100),
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("op, user, args, server", HOSTILE_REQUESTS.values(),
                         ids=HOSTILE_REQUESTS.keys())
def test_semantically_hostile_request_is_refused_as_bad_request(shared, op, user, args, server):
    c = shared
    digest = converged_digest(c)
    sock = c.dealer()
    try:
        reply = raw_request(sock, frames("REQ", request(op, user, args, server=server)))
    finally:
        sock.close(0)
    assert reply is not None, "no reply"
    assert reply["type"] == "REP", reply
    assert reply["body"]["ok"] is False, f"accepted: {reply['body']}"
    assert reply["body"]["code"] == "bad_request", reply["body"]
    assert_cluster_healthy(c, digest)


IMPOSSIBLE_VECTORS = {"key abc": {"abc": 1}, "seq -1": {"1": -1}, "seq 2**60": {"1": 2 ** 60}}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("vv", IMPOSSIBLE_VECTORS.values(), ids=IMPOSSIBLE_VECTORS.keys())
def test_ack_with_an_impossible_version_vector_is_dropped_and_changes_nothing(shared, vv):
    """Server 2 claims, to server 1's peer port, to hold impossible events of server 1."""
    c = shared
    digest = converged_digest(c)
    mark = LogMark(c, ["server-1"])
    sock = c.dealer(c.config.peer_port(1))
    try:
        sock.send_multipart(frames("ACK", {"from": 2, "vv": vv}))
        try:
            wait_until(lambda: DROPPED.search(mark.new_text("server-1")), 5, interval=0.05,
                       what="server 1 to log the drop")
        except TimeoutError:
            pass                                 # reported below, after the health check
    finally:
        sock.close(0)
    assert_cluster_healthy(c, digest)
    assert DROPPED.search(mark.new_text("server-1")), f"server 1 did not drop the ACK with {vv}"
