"""The core of issue 2, end to end: real broker and servers, the CLI as a subprocess.

Each test starts its own cluster on free ports (tests/harness.py) and waits for
conditions with deadlines. Bulk writes go through the Lazy Pirate ``Connection``
in-process; everything a user would type goes through ``python -m clients``.
"""
from __future__ import annotations

import json
import threading
import time

import pytest
import zmq

from common import log_lines as LL
from clients.connection import ClientError
from common import protocol as P
from common.histogram import Histogram
from common.processes import wait_until
from tests import wire
from tests.harness import SIGN_UP_EVENTS, Cluster

SERVERS = (1, 2, 3)
SIGN_UP = SIGN_UP_EVENTS


# --- helpers -----------------------------------------------------------------------
def order(item: dict) -> tuple[int, str]:
    return (item["lamport"], item["id"])


def assert_feed_order(posts: list[dict]) -> None:
    """Followed users' posts first, each group newest first by (lamport, id)."""
    flags = [p["followed"] for p in posts]
    assert flags == sorted(flags, reverse=True), f"followed posts not first: {flags}"
    for group in (True, False):
        keys = [order(p) for p in posts if p["followed"] is group]
        assert keys == sorted(keys, reverse=True), f"group followed={group} not newest first"


def assert_post(post: dict, author: str, text: str) -> None:
    assert set(post) >= {"id", "author", "text", "lamport", "timestamp"}
    assert post["author"] == author and post["text"] == text
    assert isinstance(post["id"], str) and post["id"]
    assert isinstance(post["lamport"], int) and post["lamport"] > 0
    assert abs(post["timestamp"] - time.time()) < 60


def assert_dm(message: dict, sender: str, to: str, text: str) -> None:
    assert set(message) >= {"id", "from", "to", "text", "lamport", "timestamp"}
    assert (message["from"], message["to"], message["text"]) == (sender, to, text)
    assert isinstance(message["lamport"], int) and message["lamport"] > 0
    assert abs(message["timestamp"] - time.time()) < 60


def register(cluster: Cluster, *users: str) -> None:
    for user in users:
        cluster.request(user, P.OP_REGISTER, {})


def write_many(cluster: Cluster, user: str, op: str, args_list: list[dict],
               server: int | None = None) -> list[dict]:
    """Acked writes over one Lazy Pirate connection (fast: no process per write)."""
    conn = cluster.connection(user)
    try:
        return [conn.request(op, args, server) for args in args_list]
    finally:
        conn.close()


def pinned(cluster: Cluster, user: str, op: str, args: dict, server: int) -> dict:
    return cluster.request(user, op, args, server=server)


# --- every command ---------------------------------------------------------------------
def test_every_command_works_end_to_end_through_the_cli(running: Cluster):
    c = running
    first = c.cli("alice", "post", "hello, world")
    assert_post(first["post"], "alice", "hello, world")
    assert first["replicas"] == 3

    second = c.cli("alice", "post", "second post")
    assert second["post"]["lamport"] > first["post"]["lamport"]
    c.cli("carol", "post", "carol was here")

    followed = c.cli("bob", "follow", "alice")
    assert followed["replicas"] == 3
    assert followed["follow"]["user"] == "bob" and followed["follow"]["target"] == "alice"
    assert c.cli("bob", "following")["following"] == ["alice"]

    feed = c.cli("bob", "feed")
    posts = feed["posts"]
    assert [p["text"] for p in posts] == ["second post", "hello, world", "carol was here"]
    assert [p["followed"] for p in posts] == [True, True, False]
    for post in posts:
        assert_post(post, post["author"], post["text"])
    assert_feed_order(posts)
    limited = c.cli("bob", "feed", "--limit", "1")["posts"]
    assert [p["id"] for p in limited] == [second["post"]["id"]]

    assert c.cli("bob", "users")["users"] == ["alice", "bob", "carol"]

    sent = c.cli("bob", "dm", "alice", "hi alice")
    assert_dm(sent["message"], "bob", "alice", "hi alice")
    assert sent["replicas"] == 3
    answer = c.cli("alice", "dm", "bob", "hi bob")
    assert answer["message"]["lamport"] > sent["message"]["lamport"]
    c.cli("bob", "dm", "alice", "how are you?")
    chat = c.cli("alice", "chat", "bob")["messages"]
    assert [m["text"] for m in chat] == ["hi alice", "hi bob", "how are you?"]
    assert [order(m) for m in chat] == sorted(order(m) for m in chat)     # oldest first
    assert chat == c.cli("bob", "chat", "alice")["messages"]             # one conversation
    last_two = c.cli("alice", "chat", "bob", "--limit", "2")["messages"]
    assert last_two == chat[-2:]

    unfollowed = c.cli("bob", "unfollow", "alice")
    assert unfollowed["replicas"] == 3 and unfollowed["follow"]["following"] is False
    assert c.cli("bob", "following")["following"] == []
    assert all(not p["followed"] for p in c.cli("bob", "feed")["posts"])

    status = c.cli(None, "status")
    assert {s["id"] for s in status["servers"]} == set(SERVERS)
    for server in status["servers"]:
        assert set(server) >= {"id", "alive", "phase", "events", "digest", "lamport"}
        assert server["alive"] and server["phase"] == "serving"
    assert "coordinator" in status and "epoch" in status


def test_notifications_show_each_post_once_then_nothing(running: Cluster):
    c = running
    register(c, "alice", "carol")
    c.cli("bob", "follow", "alice")
    c.cli("alice", "post", "one")
    c.cli("carol", "post", "not followed")
    c.cli("alice", "post", "two")

    shown = c.cli("bob", "notifications")
    items = shown["notifications"]
    assert [p["text"] for p in items] == ["one", "two"]
    for post in items:
        assert_post(post, "alice", post["text"])
    assert shown["replicas"] == 3            # marking them shown is a replicated write
    assert c.cli("bob", "notifications")["notifications"] == []

    c.cli("alice", "post", "three")
    assert [p["text"] for p in c.cli("bob", "notifications")["notifications"]] == ["three"]
    # marked shown on every server, not only the one that answered
    c.wait_converged()
    for server in SERVERS:
        assert c.cli("bob", "notifications", "--server", str(server))["notifications"] == []


def test_a_user_exists_from_their_first_command(running: Cluster):
    c = running
    assert c.cli("dave", "feed")["posts"] == []          # a read, as the very first command
    assert "dave" in c.cli("erin", "users")["users"]
    assert c.cli("erin", "follow", "dave")["follow"]["target"] == "dave"
    c.wait_converged()
    for server in SERVERS:
        assert c.cli("erin", "users", "--server", str(server))["users"] == ["dave", "erin"]


def test_user_lamport_clock_persists_across_cli_invocations(running: Cluster):
    c = running
    first = c.cli("alice", "post", "first")["post"]["lamport"]
    state_file = c.config.client_state_path("alice")
    saved = json.loads(state_file.read_text())
    assert saved["lamport"] > first              # merged the reply's stamp, and kept it
    second = c.cli("alice", "post", "second")["post"]["lamport"]
    assert second > saved["lamport"]

    # a user whose clock is far ahead carries it into the servers' stamps
    saved["lamport"] = 1_000_000
    state_file.write_text(json.dumps(saved))
    third = c.cli("alice", "post", "third")["post"]["lamport"]
    assert third > 1_000_000
    assert json.loads(state_file.read_text())["lamport"] > third


# --- replication ---------------------------------------------------------------------------
def test_each_acked_write_is_held_by_all_three_servers(running: Cluster):
    c = running
    c.cli("alice", "users")                               # registers alice
    post = c.cli("alice", "post", "replicated")
    assert post["replicas"] == 3
    follow = c.cli("bob", "follow", "alice")
    assert follow["replicas"] == 3
    dm = c.cli("bob", "dm", "alice", "private")
    assert dm["replicas"] == 3
    # no waiting: an ack means every server already holds it
    for server in SERVERS:
        pin = ("--server", str(server))
        feed = c.cli("bob", "feed", *pin)
        assert feed["server"] == server
        assert post["post"] in [{k: v for k, v in p.items() if k != "followed"}
                                for p in feed["posts"]]
        assert c.cli("bob", "following", *pin)["following"] == ["alice"]
        assert [m["id"] for m in c.cli("alice", "chat", "bob", *pin)["messages"]] == \
            [dm["message"]["id"]]


def test_origins_measure_when_every_server_holds_each_write(make_cluster):
    c = make_cluster().start(3)
    c.wait_serving(SERVERS)

    def measured() -> int:
        return sum(Histogram.parse(row["repl_lag_hist"]).total
                   for row in c.servers().values() if row["alive"])
    for i in range(5):          # alice's first command registers her and logs in: 7 writes
        assert c.cli("alice", "post", f"lag {i}")["replicas"] == 3
    # each answered write is counted once, by its origin, when the last server's
    # version vector covers it (heartbeats carry the counts to the broker)
    wait_until(lambda: measured() == 7, timeout=5, what="7 lag measurements")
    table = c.cli("alice", "status", "--wide", json=False)   # the counts shown summed up
    assert "repl_lag_hist" in table and "p99<=" in table and "[0, " not in table


def test_digests_are_equal_within_a_second_after_writes_stop(running: Cluster):
    c = running
    users = [f"user{i}" for i in range(4)]
    register(c, *users)
    errors: list[BaseException] = []

    def author(user: str, n: int) -> None:
        try:
            others = [u for u in users if u != user]
            write_many(c, user, P.OP_FOLLOW, [{"target": others[0]}])
            write_many(c, user, P.OP_POST, [{"text": f"{user} {i}"} for i in range(n)])
            write_many(c, user, P.OP_DM, [{"to": others[1], "text": f"dm {i}"} for i in range(n)])
        except BaseException as exc:    # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=author, args=(u, 15)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    live = c.wait_converged(timeout=1.0)
    assert set(live) == set(SERVERS)
    assert {s["events"] for s in live.values()} == {len(users) * (SIGN_UP + 1 + 2 * 15)}


def test_every_server_returns_the_same_feed_and_chat_in_the_same_order(running: Cluster):
    c = running
    users = ["alice", "bob", "carol"]
    register(c, *users)
    write_many(c, "alice", P.OP_FOLLOW, [{"target": "bob"}])
    errors: list[BaseException] = []

    def author(user: str, server: int) -> None:
        # each user writes through another server, at the same time: equal Lamport
        # stamps are likely, and the id must break the ties the same way everywhere
        try:
            other = "alice" if user != "alice" else "bob"
            for i in range(12):
                write_many(c, user, P.OP_POST, [{"text": f"{user} {i}"}], server)
                write_many(c, user, P.OP_DM, [{"to": other, "text": f"{user} {i}"}], server)
        except BaseException as exc:    # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=author, args=(u, s)) for u, s in zip(users, SERVERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    c.wait_converged()

    feeds = {s: pinned(c, "alice", P.OP_FEED, {"limit": 100}, s)["posts"] for s in SERVERS}
    chats = {s: pinned(c, "alice", P.OP_CHAT, {"with": "bob", "limit": 100}, s)["messages"]
             for s in SERVERS}
    assert feeds[1] == feeds[2] == feeds[3]
    assert chats[1] == chats[2] == chats[3]
    assert len(feeds[1]) == 36 and len(chats[1]) == 24
    assert_feed_order(feeds[1])
    assert [p["author"] for p in feeds[1][:12]] == ["bob"] * 12
    assert [order(m) for m in chats[1]] == sorted(order(m) for m in chats[1])
    # the same through the CLI, pinned to each server
    cli_feeds = [c.cli("alice", "feed", "--limit", "100", "--server", str(s))["posts"]
                 for s in SERVERS]
    assert cli_feeds == [feeds[1]] * 3


# --- exactly once ---------------------------------------------------------------------------
def _raw_write(cluster: Cluster, sock: zmq.Socket, body: dict) -> dict:
    reply = cluster.raw_request(sock, wire.frames(P.REQUEST, 1, body), timeout=10)
    assert reply is not None, f"no reply to {body}"
    assert reply.type == P.REPLY and reply.body["rid"] == body["rid"]
    assert reply.body["ok"], reply.body
    return reply.body


def _posts_with_text(cluster: Cluster, text: str, server: int) -> list[dict]:
    posts = pinned(cluster, "bob", P.OP_FEED, {"limit": 1000}, server)["posts"]
    return [p for p in posts if p["text"] == text]


def test_a_retried_write_is_applied_once(running: Cluster):
    c = running
    register(c, "alice", "bob")
    body = {"rid": "retry-0000000001", "op": P.OP_POST, "user": "alice",
            "args": {"text": "exactly once"}, "server": 1, "time": time.time(),
            "token": c.login("alice")}
    sock = c.dealer()
    first = _raw_write(c, sock, body)
    events = c.wait_converged()[1]["events"]
    # the retry reaches another server (as a retry after a lost reply may), then any
    again = _raw_write(c, sock, {**body, "server": 2})
    anywhere = _raw_write(c, sock, {**body, "server": None})
    assert first["server"] == 1 and again["server"] == 2
    assert first["result"]["post"] == again["result"]["post"] == anywhere["result"]["post"]
    assert first["result"]["post"]["id"] == body["rid"]
    live = c.wait_converged()
    assert {s["events"] for s in live.values()} == {events}
    for server in SERVERS:
        assert len(_posts_with_text(c, "exactly once", server)) == 1


def test_a_retry_racing_the_original_on_another_server_counts_once(running: Cluster):
    c = running
    register(c, "alice", "bob")
    before = c.wait_converged()[1]["events"]
    sock = c.dealer()
    body = {"rid": "race-00000000001", "op": P.OP_POST, "user": "alice",
            "args": {"text": "raced"}, "server": 1, "time": time.time(),
            "token": c.login("alice")}
    # both copies are on their way before either server has heard of the other
    sock.send_multipart(wire.frames(P.REQUEST, 1, body))
    sock.send_multipart(wire.frames(P.REQUEST, 1, {**body, "server": 2}))
    replies = []
    for _ in range(2):
        assert sock.poll(10_000), "no reply"
        replies.append(wire.parse(sock.recv_multipart()).body)
    assert all(r["ok"] for r in replies), replies
    assert {r["result"]["post"]["id"] for r in replies} == {body["rid"]}
    live = c.wait_converged()
    assert {s["events"] for s in live.values()} == {before + 1}
    feeds = [_posts_with_text(c, "raced", server) for server in SERVERS]
    assert feeds[0] == feeds[1] == feeds[2] and len(feeds[0]) == 1


# --- crashes ---------------------------------------------------------------------------------
def _reloaded(cluster: Cluster, name: str) -> list[int]:
    return [int(f["events"]) for f in LL.parse_all(LL.STARTED, cluster.log_text(name))]


def test_sigkill_right_after_acks_loses_nothing_and_the_server_catches_up(running: Cluster):
    c = running
    register(c, "alice", "bob")
    acked = write_many(c, "alice", P.OP_POST, [{"text": f"before {i}"} for i in range(30)],
                       server=1)
    c.kill("server-1")                               # right after the last ack
    assert all(r["replicas"] == 3 for r in acked)
    held = 2 * SIGN_UP + len(acked)
    for server in (2, 3):
        ids = {p["id"] for p in pinned(c, "bob", P.OP_FEED, {"limit": 1000}, server)["posts"]}
        assert ids == {r["post"]["id"] for r in acked}

    # written while server 1 is down: only two copies, and the replies say so
    during = write_many(c, "bob", P.OP_POST, [{"text": f"during {i}"} for i in range(10)])
    assert {r["replicas"] for r in during[-3:]} == {2}
    assert "under-replicated" in c.log_text("server-2") + c.log_text("server-3")
    wait_until(lambda: any(s.get("under_replicated", 0) > 0 for s in c.serving().values()),
               timeout=5, what="status to flag under-replication")

    c.start_server(1)
    wait_until(lambda: _reloaded(c, "server-1") == [0, held], timeout=10,
               what="server-1 reloading its events")
    c.wait_serving(SERVERS)
    live = c.wait_converged()
    assert set(live) == set(SERVERS)
    assert live[1]["events"] == held + len(during)
    ids = {p["id"] for p in pinned(c, "bob", P.OP_FEED, {"limit": 1000}, 1)["posts"]}
    assert ids == {r["post"]["id"] for r in acked + during}


def test_acked_writes_survive_sigkill_of_every_server(running: Cluster):
    c = running
    register(c, "alice", "bob")
    acked = write_many(c, "alice", P.OP_POST, [{"text": f"post {i}"} for i in range(20)])
    acked += write_many(c, "bob", P.OP_DM, [{"to": "alice", "text": f"dm {i}"} for i in range(5)])
    for server in SERVERS:
        c.kill(f"server-{server}")
    for server in SERVERS:
        c.start_server(server)
    c.wait_serving(SERVERS)
    live = c.wait_converged()
    assert {s["events"] for s in live.values()} == {2 * SIGN_UP + len(acked)}
    for server in SERVERS:
        assert _reloaded(c, f"server-{server}")[-1] == 2 * SIGN_UP + len(acked)
        feed = pinned(c, "bob", P.OP_FEED, {"limit": 1000}, server)["posts"]
        assert len(feed) == 20
        chat = pinned(c, "bob", P.OP_CHAT, {"with": "alice", "limit": 100}, server)["messages"]
        assert [m["text"] for m in chat] == [f"dm {i}" for i in range(5)]


# --- configuration ---------------------------------------------------------------------------
def test_two_clusters_with_different_port_bases_run_side_by_side(make_cluster):
    a = make_cluster("a").start(3)
    a.wait_serving(SERVERS)
    b = make_cluster("b").start(3)             # chooses its ports with a's already bound
    b.wait_serving(SERVERS)
    assert a.config.port_base != b.config.port_base

    a.cli("alice", "post", "only in a")
    b.cli("bob", "post", "only in b")
    assert a.cli("alice", "users")["users"] == ["alice"]
    assert b.cli("bob", "users")["users"] == ["bob"]
    assert [p["text"] for p in a.cli("alice", "feed")["posts"]] == ["only in a"]
    assert [p["text"] for p in b.cli("bob", "feed")["posts"]] == ["only in b"]
    a.wait_converged()
    b.wait_converged()
    assert a.digests()[1] != b.digests()[1]
    assert all(a.alive(n) for n in a.names()) and all(b.alive(n) for n in b.names())
    assert (a.folder / "data" / "server-1").is_dir() and (b.folder / "data" / "server-1").is_dir()


def test_an_unknown_server_pin_is_refused(running: Cluster):
    with pytest.raises(ClientError) as refused:
        running.request("alice", P.OP_USERS, {}, server=7, deadline=3)
    assert refused.value.code == P.ERR_NO_SUCH_SERVER
