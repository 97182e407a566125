"""Issue 13, no stale reads, with real processes: only READY puts a server in the
broker's pool, and a server whose bus falls silent leaves ``serving`` at once.

* A member (the tests' trusted key, ``server-99``) speaking the backend protocol by
  hand: heartbeats that say ``serving`` show in ``status`` but never get a request;
  its READY does; a heartbeat in another phase takes it out again. Each heartbeat the
  broker sends says whether it is pooled.
* The broker frozen (SIGSTOP: bus and backend silent at once, every TCP link up):
  each server leaves ``serving`` with one line saying why, and once the broker
  resumes, catches up and is pooled again by its READY, never by its heartbeats
  that queued up while it was frozen.
"""
from __future__ import annotations

import pytest
import zmq

from common import keys
from common import protocol as P
from common.clock import LamportClock
from common.processes import wait_until
from tests.bad_input import heartbeat
from tests.faults import freeze, log_after, log_mark, thaw
from tests.harness import TRUSTED, Cluster
from tests.hostile_helpers import frames, parse, request

pytestmark = pytest.mark.timeout(120)

MEMBER = 99


def member_dealer(cluster: Cluster) -> zmq.Socket:
    """A DEALER to the backend with server 99's key and identity, as a server makes."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    for name, value in cluster.curve_options(TRUSTED).items():
        setattr(sock, name, value)
    sock.setsockopt(zmq.IDENTITY, keys.dealer_identity(MEMBER))
    sock.connect(cluster.config.endpoint(cluster.config.backend_port))
    return sock


def row(cluster: Cluster) -> dict | None:
    return cluster.servers().get(MEMBER)


def next_broker_hb(sock: zmq.Socket, timeout: float = 5.0) -> P.Heartbeat:
    """The next heartbeat the broker sends us (requests, if any, are returned too)."""
    link = P.Endpoint(sock, P.BROKER_TO_SERVER, LamportClock())
    deadline = timeout
    while sock.poll(int(deadline * 1000)):
        msg = link.receive(sock.recv_multipart()).msg
        if isinstance(msg, P.Heartbeat):
            return msg
    raise AssertionError("no heartbeat from the broker")


def pinned_status_read(cluster: Cluster, user: str) -> dict:
    """A read pinned to server 99 as a raw request: the broker's answer, or None
    when it routed the request (to us)."""
    sock = cluster.dealer()
    try:
        sock.send_multipart(frames("REQ", request(P.OP_FEED, user, {"limit": 5},
                                                  server=MEMBER, token=cluster.login(user))))
        if not sock.poll(5000):
            return None
        return parse(sock.recv_multipart())["body"]
    finally:
        sock.close(0)


def test_only_ready_puts_a_server_in_the_pool_never_a_heartbeat(running: Cluster):
    c = running
    sock = member_dealer(c)
    try:
        sock.send_multipart([b""] + frames("HB", heartbeat(MEMBER)))   # "serving", no READY
        wait_until(lambda: (row(c) or {}).get("phase") == "serving", 10,
                   what="the member's heartbeat in status")
        assert row(c)["pooled"] is False
        assert next_broker_hb(sock).pooled is False
        refused = pinned_status_read(c, "ann")
        assert refused is not None and refused["ok"] is False
        assert refused["error"] == f"server {MEMBER} is not serving"
        wait_until(lambda: "not in the pool until its READY" in c.log_text("broker"), 5,
                   what="the broker's line on the heartbeat (its log is written every 50 ms)")

        sock.send_multipart([b""] + frames("READY", {"id": MEMBER}))
        wait_until(lambda: (row(c) or {}).get("pooled") is True, 10, what="pooled on READY")
        wait_until(lambda: next_broker_hb(sock).pooled is True, 10,
                   what="the broker's heartbeat saying pooled")
        assert pinned_status_read(c, "ann") is None         # routed to us: we are pooled

        sock.send_multipart([b""] + frames("HB", heartbeat(MEMBER, phase="syncing")))
        wait_until(lambda: (row(c) or {}).get("pooled") is False, 10,
                   what="out of the pool on a syncing heartbeat")
        sock.send_multipart([b""] + frames("HB", heartbeat(MEMBER)))    # serving again: not pooled
        wait_until(lambda: (row(c) or {}).get("phase") == "serving", 10, what="serving again")
        assert row(c)["pooled"] is False
    finally:
        sock.close(0)


def test_a_server_whose_bus_falls_silent_leaves_serving_and_is_pooled_again_by_ready(
        running: Cluster):
    c = running
    c.request("ann", P.OP_REGISTER, {})
    marks = {name: log_mark(c, name) for name in ("broker", "server-1", "server-2", "server-3")}
    freeze(c, "broker")
    try:
        for sid in (1, 2, 3):
            wait_until(lambda: "the bus is silent: the others may acknowledge writes I never "
                               "see" in log_after(c, f"server-{sid}", marks[f"server-{sid}"]),
                       15, what=f"server-{sid} leaving serving")
    finally:
        thaw(c, "broker")
    c.wait_serving({1, 2, 3}, timeout=20)
    wait_until(lambda: all(s.get("pooled") for s in c.serving().values()), 10,
               what="every server pooled again")
    # each came back by a READY sent after it caught up again
    wait_until(lambda: log_after(c, "broker", marks["broker"]).count("READY: joins the pool")
               >= 3, 10, what="the broker's log of three READYs")
    for sid in (1, 2, 3):
        after = log_after(c, f"server-{sid}", marks[f"server-{sid}"])
        assert "phase joining -> syncing" in after and "phase syncing -> serving" in after
    # a majority at once (a peer whose BEAT still says joining does not count yet), and
    # every copy soon after
    assert c.request("ann", P.OP_POST, {"text": "after the freeze"})["replicas"] >= 2
    wait_until(lambda: all(s["under_replicated"] == 0 for s in c.serving().values()), 10,
               what="every write held by all three servers")
