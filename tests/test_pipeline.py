"""Many requests in flight (issue 16): ``clients/pipeline.py`` over the broker's fast
path (``broker/fast_path.py``), against real processes.

Pipelining must weaken no guarantee: every user's posts keep their issue order on
every server, whichever servers took them; a server SIGKILLed mid-stream loses no
acked post and duplicates none; the fast path takes only its own operations, and a
stranger's garbage on it changes nothing.
"""
from __future__ import annotations

import time

import pytest
import zmq

from broker.fast_path import FastLog
from clients.pipeline import Pipeline
from common import keys
from common import protocol as P
from common.processes import wait_until
from tests.faults import freeze, thaw
from tests.harness import Cluster
from tests.hostile_helpers import collect_replies, frames, raw_request, request, signed_request

pytestmark = pytest.mark.timeout(180)

SERVERS = [1, 2, 3]
WINDOW = 64


def pipeline(cluster: Cluster, user: str, window: int = WINDOW) -> tuple[zmq.Context, Pipeline]:
    ctx = zmq.Context()
    ctx.linger = 0
    pipe = Pipeline(ctx, cluster.config, user, keys.broker_public_key(cluster.config.data_dir),
                    window=window, token=cluster.login(user))
    return ctx, pipe


def posts_on(cluster: Cluster, server: int) -> list[dict]:
    """Every post a server holds, oldest first (a pinned feed of a user who follows nobody)."""
    feed = cluster.request("reader", P.OP_FEED, {"limit": P.MAX_LIMIT}, server=server)
    return list(reversed(feed["posts"]))


@pytest.mark.timeout(240)
def test_64_posts_in_flight_per_user_keep_their_order_and_a_sigkill_loses_none(cluster):
    cluster.start(3)
    cluster.wait_serving(SERVERS, timeout=30)
    users, per_user = ["ann", "bob"], 300
    pipes = {u: pipeline(cluster, u) for u in users}
    cluster.login("reader")
    acked: dict[str, set[str]] = {u: set() for u in users}
    failed: list = []
    issued = {u: 0 for u in users}
    killed = False
    try:
        deadline = time.monotonic() + 120
        while any(issued[u] < per_user or pipes[u][1].pending for u in users):
            assert time.monotonic() < deadline, f"not done: {issued}, acked " \
                f"{ {u: len(a) for u, a in acked.items()} }"
            for user in users:
                pipe = pipes[user][1]
                while issued[user] < per_user and pipe.pending < WINDOW:
                    pipe.submit(P.OP_POST, {"text": f"{user} {issued[user]}"})
                    issued[user] += 1
                for done in pipe.poll(0.01):
                    if done.ok:
                        acked[user].add(done.reply["result"]["post"]["text"])
                    else:
                        failed.append((user, done.code, done.reply))
            if not killed and sum(map(len, acked.values())) >= 150:
                cluster.kill("server-2")              # mid-stream: 2 windows in flight
                killed = True
        retries = sum(p.retries for _, p in pipes.values())
    finally:
        for ctx, pipe in pipes.values():
            pipe.close()
            ctx.destroy(0)
    assert killed
    assert not failed, failed[:5]
    assert all(len(acked[u]) == per_user for u in users), {u: len(a) for u, a in acked.items()}

    cluster.start_server(2)                           # back, and caught up
    cluster.wait_serving(SERVERS, timeout=30)
    for server in SERVERS:
        def complete(server=server):
            held = posts_on(cluster, server)
            return held if len(held) >= len(users) * per_user else None
        held = wait_until(complete, 20, what=f"server {server} to hold every post")
        for user in users:
            texts = [p["text"] for p in held if p["author"] == user]
            assert len(texts) == len(set(texts)), f"server {server}: a post of {user} twice"
            assert set(texts) == acked[user], f"server {server}: acked posts of {user} missing"
            assert texts == [f"{user} {i}" for i in range(per_user)], \
                f"server {server}: {user}'s posts out of issue order ({retries} retries)"


def test_fast_path_takes_only_its_own_operations(cluster):
    """Logins (the throttle), pinned requests and stamps ahead of the sender's clock are
    refused on the fast path, each with a reply naming why; a stranger's garbage gets
    at most a refusal, and the cluster goes on answering."""
    cluster.start(3)
    cluster.wait_serving(SERVERS, timeout=30)
    fast = cluster.config.fast_frontend_port
    sock = cluster.dealer(fast)
    try:
        login = raw_request(sock, frames("REQ", request(P.OP_LOGIN, "mallory", {
            "password": "guess-guess-guess"}, token="t" * 43)))
        assert login is not None and login["body"]["code"] == P.ERR_BAD_REQUEST
        assert "routed port" in login["body"]["error"]

        pinned = raw_request(sock, frames("REQ", signed_request(
            cluster, P.OP_FEED, "ann", {"limit": 5}, server=1)))
        assert pinned is not None and pinned["body"]["code"] == P.ERR_BAD_REQUEST

        ahead = signed_request(cluster, P.OP_POST, "ann", {"text": "from the future"})
        ahead["stamp"] = 10 ** 9
        reply = raw_request(sock, frames("REQ", ahead, lamport=5))
        assert reply is not None and reply["body"]["code"] == P.ERR_BAD_REQUEST, reply
        assert "ahead" in reply["body"]["error"]

        for junk in ([b"REQ", b"1", b"{not json"], [b"\xff" * 40], [b"REQ", b"x", b"{}"],
                     [b"REP", b"1", b"{}"], [b""] * 9):
            sock.send_multipart(junk)
        still = signed_request(cluster, P.OP_POST, "ann", {"text": "still served"})
        sock.send_multipart(frames("REQ", still))
        ok = collect_replies(sock, {still["rid"]}, timeout=10)[still["rid"]]
        assert ok["result"]["post"]["text"] == "still served", ok
    finally:
        sock.close(0)
    assert all(cluster.alive(f"server-{i}") for i in SERVERS)
    assert "refused a fast-path request" in "".join(
        cluster.log_since_start(f"server-{i}") for i in SERVERS)


def test_a_batch_of_requests_is_served_in_order_and_each_bad_one_refused_alone(cluster):
    """A REQS from anyone: each body is validated alone, the good ones served in order,
    each bad one refused with its own reply; a batch that is malformed as a whole, or
    sent where batches do not go, gets one refusal; the cluster serves on."""
    cluster.start(3)
    cluster.wait_serving(SERVERS, timeout=30)
    sock = cluster.dealer(cluster.config.fast_frontend_port)
    routed = cluster.dealer()
    try:
        first = signed_request(cluster, P.OP_POST, "ann", {"text": "batch one"})
        blank = signed_request(cluster, P.OP_POST, "ann", {"text": "   "})
        login = request(P.OP_LOGIN, "ann", {"password": "guess-guess-guess"}, token="t" * 43)
        second = signed_request(cluster, P.OP_POST, "ann", {"text": "batch two"})
        sock.send_multipart(frames("REQS", {"reqs": [first, blank, login, 123, second]}))
        got = collect_replies(sock, {first["rid"], blank["rid"], login["rid"], second["rid"],
                                     "?"}, timeout=10)
        assert got[first["rid"]]["ok"] and got[second["rid"]]["ok"], got
        for bad in (blank, login):
            assert got[bad["rid"]]["code"] == P.ERR_BAD_REQUEST, got[bad["rid"]]
        assert "routed port" in got[login["rid"]]["error"]
        assert got["?"]["code"] == P.ERR_BAD_REQUEST
        feed = cluster.request("ann", P.OP_FEED, {"limit": 5})
        assert [p["text"] for p in feed["posts"]][:2] == ["batch two", "batch one"]

        too_many = {"reqs": [signed_request(cluster, P.OP_POST, "ann", {"text": f"n{i}"})
                             for i in range(P.FAST_BATCH + 1)]}
        refusal = raw_request(sock, frames("REQS", too_many))
        assert refusal is not None and refusal["body"]["code"] == P.ERR_BAD_REQUEST, refusal
        assert "64" in refusal["body"]["error"]
        wrong = raw_request(routed, frames("REQS", {"reqs": [second]}))
        assert wrong is not None and wrong["body"]["code"] == P.ERR_BAD_REQUEST, wrong
        feed = cluster.request("ann", P.OP_FEED, {"limit": 5})
        assert not any(p["text"].startswith("n") for p in feed["posts"]), \
            "nothing of a refused batch was posted"
    finally:
        sock.close(0)
        routed.close(0)
    assert all(cluster.alive(f"server-{i}") for i in SERVERS)


class Lines:
    """A ProcessLog's ``line`` for a Pipeline, kept in a list."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def line(self, direction: str, peer: str, what: str, level: str = "INFO") -> None:
        self.lines.append(f"{direction} {peer} | {what}")


def test_a_pipeline_sends_its_window_together_and_each_request_is_logged(cluster):
    cluster.start(3)
    cluster.wait_serving(SERVERS, timeout=30)
    ctx, pipe = pipeline(cluster, "cat", window=32)
    pipe.log = Lines()
    try:
        rids = [pipe.submit(P.OP_POST, {"text": f"cat {i}"}) for i in range(40)]
        done = {d.rid: d for d in pipe.drain(30)}
    finally:
        pipe.close()
        ctx.destroy(0)
    assert set(done) == set(rids) and all(d.ok for d in done.values()), \
        [d.code for d in done.values() if not d.ok]
    together = [line for line in pipe.log.lines if "together" in line]
    assert len(together) >= 31, "the window after the first request went in one REQS"
    wait_until(lambda: all(f"rid={rid} ok" in cluster.log_since_start("broker") for rid in rids),
               10, what="the broker's line for each request")
    feed = cluster.request("cat", P.OP_FEED, {"limit": 40})
    assert [p["text"] for p in reversed(feed["posts"])] == [f"cat {i}" for i in range(40)]


def test_a_lingering_pipeline_holds_requests_made_meanwhile_and_sends_them_together(cluster):
    """``linger``: a request made while others are in flight waits up to that long
    for company, then goes with the others made meanwhile in one ``REQS``."""
    cluster.start(3)
    cluster.wait_serving(SERVERS, timeout=30)
    ctx, pipe = pipeline(cluster, "dot")
    pipe.linger, pipe.log = 0.3, Lines()
    done = {}
    try:
        pipe.submit(P.OP_LISTEN, {"wait": 3.0, "since": 0})   # parked: in flight meanwhile
        rids = [pipe.submit(P.OP_POST, {"text": f"dot {i}"}) for i in range(5)]
        deadline = time.monotonic() + 20
        while not set(rids) <= set(done) and time.monotonic() < deadline:
            done.update((d.rid, d) for d in pipe.poll(0.05))
    finally:
        pipe.close()
        ctx.destroy(0)
    assert all(rid in done and done[rid].ok for rid in rids), done
    assert all(done[rid].finished - done[rid].issued >= 0.3 for rid in rids), \
        "each post waited for its linger"
    together = [line for line in pipe.log.lines if "5 together" in line]
    assert len(together) == 5, pipe.log.lines
    feed = cluster.request("dot", P.OP_FEED, {"limit": 5})
    assert [p["text"] for p in reversed(feed["posts"])] == [f"dot {i}" for i in range(5)]


def test_fast_log_writes_one_line_per_answered_request():
    lines, clock = [], []
    log = FastLog(lambda *parts: lines.append(parts), clock.append)
    req = frames("REQ", {"rid": "r1", "op": "post", "user": "ann"}, lamport=7)
    rep = frames("REP", {"rid": "r1", "ok": True, "server": 2}, lamport=40)
    log.on_copy([b"\x00ab", *req])
    log.on_copy([b"\x00ab", *rep])
    log.on_copy([b"\x00ab", *frames("REP", {"rid": "r9", "ok": False, "server": 1,
                                            "code": "unavailable"}, lamport=41)])
    for junk in ([b"x"], [b"\x00ab", b"REQ", b"1", b"{oops"], [b"\x00ab", b"HB", b"1", b"{}"],
                 [b"\x00ab", b"REP", b"9" * 40, b'{"rid": "r2"}']):
        log.on_copy(junk)
    assert lines[0] == ("fast", "server-2->ann", "post rid=r1 ok")
    assert lines[1] == ("fast", "server-1->?", "? rid=r9 error unavailable")
    assert log.requests == 1 and log.replies == 3
    assert clock == [40, 41], "only a plausible reply stamp is merged"
    assert len(log.names) == 0, "every answered request forgotten"


def test_a_frozen_server_leaves_the_fast_path_and_comes_back(cluster):
    """SIGSTOP: the broker's ZMTP heartbeats drop the frozen server's fast connection,
    so posts are answered on their first try again (none queued to it); SIGCONT: it
    notices its freeze, catches up and serves (fast path too) again, holding them all."""
    cluster.start(3)
    cluster.wait_serving(SERVERS, timeout=30)
    ctx, pipe = pipeline(cluster, "ann", window=1)
    acked: set[str] = set()
    count = [0]

    def first_tries_in_a_row(n: int) -> bool:
        for _ in range(n):
            count[0] += 1
            done = pipe.call(P.OP_POST, {"text": f"ann {count[0]}"})
            assert done.ok, done.reply
            acked.add(done.reply["result"]["post"]["text"])
            if done.tries > 1:
                return False
        return True

    try:
        assert first_tries_in_a_row(10)
        freeze(cluster, "server-3")
        try:
            wait_until(lambda: first_tries_in_a_row(30), 15,
                       what="30 posts in a row answered on their first try")
        finally:
            thaw(cluster, "server-3")
        def reopened() -> bool:
            log = cluster.log_since_start("server-3")
            return "fast path closed" in log and \
                "fast path open" in log.rsplit("fast path closed", 1)[1]
        wait_until(reopened, 30, what="server-3 to close its fast path, then open it again")
        assert first_tries_in_a_row(10)
    finally:
        pipe.close()
        ctx.destroy(0)
    cluster.wait_serving(SERVERS, timeout=30)
    held = wait_until(lambda: (h := posts_on(cluster, 3)) and {p["text"] for p in h} >= acked
                      and h, 20, what="server-3 to hold every acked post")
    assert len({p["text"] for p in held}) == len(held)


def test_a_shell_script_of_posts_goes_out_pipelined_and_prints_in_order(cluster):
    """``shell`` from a script: a run of posts is sent without waiting for each answer
    (the client's log shows many sends before the first answer), the outputs come in
    the script's order, and the posts keep that order on every server."""
    import subprocess
    import sys
    from common.processes import ROOT
    cluster.start(3)
    cluster.wait_serving(SERVERS, timeout=30)
    script = "".join(f"post 'line {i}'\n" for i in range(120)) + "feed --limit 3\n"
    done = subprocess.run([sys.executable, "-m", "clients", "--user", "alice", "shell"],
                          cwd=ROOT, env=cluster.env, input=script, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert len(out) == 120 + 1 + 3, out[-6:]
    assert all(line.startswith("posted as alice (id ") for line in out[:120])
    lamports = [int(line.split("L=")[1].split(",")[0]) for line in out[:120]]
    assert lamports == sorted(lamports), "outputs out of the script's order"
    assert out[121].endswith("alice: line 119") and out[123].endswith("alice: line 117")
    log = cluster.log_text("client-alice").splitlines()
    first_answer = next(i for i, line in enumerate(log) if "| recv server-" in line
                        and " post ok " in line)
    sends_before = sum(1 for line in log[:first_answer] if "| send broker | post " in line)
    assert sends_before > 1, "the posts went out one at a time"
    for server in SERVERS:
        texts = [p["text"] for p in posts_on(cluster, server) if p["author"] == "alice"]
        assert texts == [f"line {i}" for i in range(120)], f"server {server}"
