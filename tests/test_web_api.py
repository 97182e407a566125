"""Issue 14, the HTTP API: a real cluster, a real gateway process, httpx.

One cluster and one gateway for the whole module (``web``); every test uses users
of its own. Each endpoint's errors come back as JSON ``{error, code}`` with the
servers' (the CLI's) message and the HTTP status the code calls for.
"""
from __future__ import annotations

import os
import re
import secrets
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from common import log as common_log
from common import protocol as P
from common.processes import wait_until
from tests.harness import Cluster
from web import local

PASSWORD = "web-pass-Qx72"
CSRF = {"X-Requested-With": "tests"}


class Web:
    """The module's cluster and gateway."""

    def __init__(self, cluster: Cluster, port: int) -> None:
        self.cluster, self.port = cluster, port
        self.url = f"http://127.0.0.1:{port}"

    def client(self, csrf: bool = True) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=CSRF if csrf else {}, timeout=10.0)

    def user(self, prefix: str = "u") -> tuple[str, httpx.Client]:
        """A new user, registered and signed in: (name, their client)."""
        name = f"{prefix}_{secrets.token_hex(4)}"
        client = self.client()
        reply = client.post("/api/register", json={"user": name, "password": PASSWORD})
        assert reply.status_code == 200, reply.text
        return name, client


def start_gateway(folder: Path, env: dict | None = None) -> Web:
    """A cluster of 3 serving servers and a gateway on a free port (stop ``.cluster``)."""
    cluster = Cluster(folder, env)
    try:
        cluster.start(3)
        cluster.wait_serving({1, 2, 3})
        port = local.usable_port(0)
        local.start(cluster.group, port)
        local.wait_ready(port, alive=lambda: cluster.alive(local.NAME))
    except BaseException:
        cluster.stop()
        raise
    return Web(cluster, port)


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    web = start_gateway(tmp_path_factory.mktemp("web-api"))
    yield web
    web.cluster.stop()


def error_of(reply: httpx.Response, status: int, code: str) -> str:
    """The error's message, after checking its status, code and JSON shape."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"error", "code"} and body["code"] == code, body
    assert "Traceback" not in body["error"]
    return body["error"]


# --- accounts ----------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_register_sets_an_httponly_strict_cookie_and_me_names_the_user(web):
    name = f"reg_{secrets.token_hex(4)}"
    with web.client() as client:
        reply = client.post("/api/register", json={"user": name, "password": PASSWORD})
        assert reply.status_code == 200 and reply.json()["user"] == name
        cookie = reply.headers["set-cookie"]
        assert cookie.startswith("social_session=") and "HttpOnly" in cookie
        assert "samesite=strict" in cookie.lower() and "Path=/" in cookie
        assert client.get("/api/me").json() == {"user": name, "following": [], "total": 0}

        assert f"the name '{name}' is taken" in error_of(
            client.post("/api/register", json={"user": name, "password": PASSWORD}), 409, "name_taken")
        assert "8 to 1024 characters" in error_of(
            client.post("/api/register", json={"user": "short_pw", "password": "1234567"}),
            400, "bad_request")
        error_of(client.post("/api/register", json={"user": "Bad Name", "password": PASSWORD}),
                 400, "bad_request")
        error_of(client.post("/api/register", json={"user": name}), 400, "bad_request")


@pytest.mark.timeout(60)
def test_login_errors_and_logout_ends_the_session_everywhere(web):
    name, client = web.user("login")
    with web.client() as other:
        assert f"wrong password for {name}" in error_of(
            other.post("/api/login", json={"user": name, "password": "not-the-password"}),
            401, "unauthorized")
        assert "register first" in error_of(
            other.post("/api/login", json={"user": f"nobody_{secrets.token_hex(3)}",
                                           "password": PASSWORD}), 404, "no_account")
        assert other.post("/api/login", json={"user": name, "password": PASSWORD}).status_code == 200
        old_cookie = other.cookies.get("social_session")
        assert other.get("/api/me").json()["user"] == name
        reply = other.post("/api/logout")
        assert reply.status_code == 200 and 'social_session=""' in reply.headers["set-cookie"]
        error_of(other.get("/api/me"), 401, "unauthorized")
    with web.client() as replay:                  # the old token is dead on the servers too
        replay.cookies.set("social_session", old_cookie)
        assert "not a valid session" in error_of(replay.get("/api/me"), 401, "unauthorized")
    assert client.get("/api/me").json()["user"] == name      # the other session lives on
    client.close()


@pytest.mark.timeout(60)
def test_repeated_wrong_passwords_are_throttled_by_the_servers_with_retry_after(web):
    name, client = web.user("throttle")
    client.close()
    with web.client() as guesser:
        codes = []
        for _ in range(8):
            reply = guesser.post("/api/login", json={"user": name, "password": "guess-guess"})
            codes.append(reply.status_code)
            if reply.status_code == 429:
                break
        assert codes[-1] == 429, codes
        assert "try again in" in error_of(reply, 429, "throttled")
        assert int(reply.headers["retry-after"]) >= 1


# --- sessions and CSRF -----------------------------------------------------------------------
AUTHENTICATED = [("GET", "/api/me", None), ("GET", "/api/feed", None), ("GET", "/api/users", None),
                 ("GET", "/api/following", None), ("GET", "/api/chat?with=bob", None),
                 ("GET", "/api/conversations", None), ("GET", "/api/stream", None),
                 ("POST", "/api/post", {"text": "hi"}), ("POST", "/api/follow", {"user": "bob"}),
                 ("POST", "/api/unfollow", {"user": "bob"}), ("POST", "/api/dm", {"to": "bob", "text": "x"}),
                 ("POST", "/api/notifications", None), ("POST", "/api/logout", None)]


@pytest.mark.timeout(60)
def test_every_endpoint_but_status_needs_a_session(web):
    with web.client() as client:
        for method, path, body in AUTHENTICATED:
            error_of(client.request(method, path, json=body), 401, "unauthorized")
        client.cookies.set("social_session", "alice.not-a-token")
        error_of(client.get("/api/me"), 401, "unauthorized")
        client.cookies.set("social_session", f"alice.{'A' * 43}")      # well-formed, not valid
        assert "not a valid session of alice" in error_of(client.get("/api/me"), 401, "unauthorized")
        assert client.get("/api/status").status_code == 200


@pytest.mark.timeout(60)
def test_state_changing_calls_need_the_custom_header_and_this_origin(web):
    name, client = web.user("csrf")
    cookie = client.cookies.get("social_session")
    with web.client(csrf=False) as bare:
        bare.cookies.set("social_session", cookie)
        for method, path, body in AUTHENTICATED + [("POST", "/api/login", {"user": name, "password": PASSWORD}),
                                                   ("POST", "/api/register", {"user": name, "password": PASSWORD})]:
            if method == "POST":
                assert "X-Requested-With" in error_of(bare.request(method, path, json=body),
                                                       403, "forbidden")
        error_of(client.post("/api/post", json={"text": "x"}, headers={"Origin": "http://evil.example"}),
                 403, "forbidden")
        error_of(client.get("/api/feed", headers={"Origin": "http://evil.example"}), 403, "forbidden")
    assert client.post("/api/post", json={"text": "same origin"},
                       headers={"Origin": web.url}).status_code == 200
    feed = client.get("/api/feed").json()["posts"]
    assert [p["text"] for p in feed if p["author"] == name] == ["same origin"]
    client.close()


# --- the network's endpoints and their errors ---------------------------------------------------
@pytest.mark.timeout(60)
def test_post_feed_follow_and_their_errors(web):
    alice, a = web.user("alice")
    bob, b = web.user("bob")
    reply = a.post("/api/post", json={"text": "hello <b>world</b>"})
    assert reply.status_code == 200
    post = reply.json()
    assert post["post"]["author"] == alice and post["post"]["text"] == "hello <b>world</b>"
    assert post["replicas"] >= 2

    assert b.post("/api/follow", json={"user": alice}).json()["follow"]["following"] is True
    assert b.get("/api/following").json()["following"] == [alice]
    assert b.get("/api/me").json()["following"] == [alice]
    feed = b.get("/api/feed", params={"limit": 5}).json()["posts"]
    assert feed[0]["author"] == alice and feed[0]["followed"] is True
    assert {alice, bob} <= set(b.get("/api/users").json()["users"])
    assert b.post("/api/unfollow", json={"user": alice}).json()["follow"]["following"] is False
    assert b.get("/api/following").json()["following"] == []

    bad = error_of
    assert "text must not be empty" in bad(a.post("/api/post", json={"text": "   "}), 400, "bad_request")
    assert "1 to 500 characters" in bad(a.post("/api/post", json={"text": "x" * 501}), 400, "bad_request")
    assert "control characters" in bad(a.post("/api/post", json={"text": "a\x00b"}), 400, "bad_request")
    assert "direction overrides" in bad(a.post("/api/post", json={"text": "a\u202eb"}), 400, "bad_request")
    bad(a.post("/api/post", json={"text": 5}), 400, "bad_request")
    assert "extra" in bad(a.post("/api/post", json={"text": "hi", "author": bob}), 400, "bad_request").lower()
    bad(a.post("/api/post", json=["hi"]), 400, "bad_request")
    bad(a.post("/api/post", content=b"{not json", headers={"Content-Type": "application/json"}),
        400, "bad_request")
    assert "unknown user 'nobody_here'" in bad(a.post("/api/follow", json={"user": "nobody_here"}),
                                               404, "unknown_user")
    assert "cannot follow yourself" in bad(a.post("/api/follow", json={"user": alice}), 400, "bad_request")
    bad(a.post("/api/unfollow", json={"user": "UPPER"}), 400, "bad_request")
    for limit in ("0", "1001", "many"):
        bad(a.get("/api/feed", params={"limit": limit}), 400, "bad_request")
    bad(a.get("/api/feed", params={"server": "0"}), 400, "bad_request")
    bad(a.get("/api/users", params={"server": "77"}), 404, "no_such_server")
    assert a.get("/api/feed", params={"server": "2"}).json()["server"] == 2
    bad(a.get("/api/nowhere"), 404, "not_found")
    too_big = a.post("/api/post", content=b"x" * (P.MAX_REQUEST_BYTES + 1),
                     headers={"Content-Type": "application/json"})
    bad(too_big, 413, "too_large")
    chunked = a.post("/api/post", content=(b"x" * 1024 for _ in range(P.MAX_REQUEST_BYTES // 1024 + 1)),
                     headers={"Content-Type": "application/json"})       # no Content-Length
    bad(chunked, 413, "too_large")
    assert a.post("/api/post", content=(part for part in (b'{"text": ', b'"in two chunks"}')),
                  headers={"Content-Type": "application/json"}).status_code == 200
    a.close()
    b.close()


@pytest.mark.timeout(60)
def test_dm_chat_conversations_notifications_and_their_errors(web):
    alice, a = web.user("alice")
    bob, b = web.user("bob")
    sent = [b.post("/api/dm", json={"to": alice, "text": f"message {i}"}).json()["message"]
            for i in range(3)]
    assert all(m["from"] == bob and m["to"] == alice for m in sent)
    chat = a.get("/api/chat", params={"with": bob}).json()["messages"]
    assert [m["text"] for m in chat] == ["message 0", "message 1", "message 2"]      # oldest first
    assert [m["lamport"] for m in chat] == sorted(m["lamport"] for m in chat)
    conversations = a.get("/api/conversations").json()["conversations"]
    assert [c["with"] for c in conversations] == [bob] and conversations[0]["last"]["text"] == "message 2"

    assert b.post("/api/follow", json={"user": alice}).status_code == 200
    a.post("/api/post", json={"text": "for my followers"})
    seen = b.post("/api/notifications").json()["notifications"]
    assert [n["text"] for n in seen] == ["for my followers"]
    assert b.post("/api/notifications").json()["notifications"] == []   # shown once

    assert "unknown user 'nobody_here'" in error_of(
        a.post("/api/dm", json={"to": "nobody_here", "text": "hi"}), 404, "unknown_user")
    assert "cannot message yourself" in error_of(
        a.post("/api/dm", json={"to": alice, "text": "hi"}), 400, "bad_request")
    error_of(a.post("/api/dm", json={"to": bob, "text": ""}), 400, "bad_request")
    error_of(a.post("/api/dm", json={"to": bob}), 400, "bad_request")
    error_of(a.get("/api/chat", params={"with": "Not A Name"}), 400, "bad_request")
    error_of(a.get("/api/chat"), 400, "bad_request")
    error_of(a.get("/api/chat", params={"with": bob, "limit": 0}), 400, "bad_request")
    a.close()
    b.close()


@pytest.mark.timeout(60)
def test_the_stream_pushes_followed_posts_and_messages_live(web):
    alice, a = web.user("alice")
    bob, b = web.user("bob")
    assert b.post("/api/follow", json={"user": alice}).status_code == 200
    events: list[tuple[str, dict]] = []
    ready = threading.Event()

    def read():
        kind = None
        with b.stream("GET", "/api/stream", timeout=20) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    if kind == "ready":
                        ready.set()
                    else:
                        events.append((kind, P.loads(line[6:])))
                    if len(events) == 2:
                        return
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert ready.wait(10)
    began = time.monotonic()
    a.post("/api/post", json={"text": "live post"})
    a.post("/api/dm", json={"to": bob, "text": "live message"})
    reader.join(10)
    assert not reader.is_alive() and time.monotonic() - began < 5
    assert sorted((kind, item["text"]) for kind, item in events) == [
        ("message", "live message"), ("post", "live post")]

    def unparked():        # the browser went away: its parked listen is sent again, wait 0
        log = web.cluster.log_text("web")
        return f"stream of {bob} closed" in log and re.search(
            rf"send broker \| listen rid=\S+ user={bob} wait=0\.0 since=0 try=2", log)
    wait_until(unparked, 5, what="the closed stream's listen unparked")
    a.close()
    b.close()


@pytest.mark.timeout(60)
def test_one_user_may_keep_only_a_few_streams_open(web):
    from web.api import MAX_STREAMS
    name, client = web.user("streams")
    streams = []
    try:
        for _ in range(MAX_STREAMS):
            stream = client.stream("GET", "/api/stream", timeout=20)
            reply = stream.__enter__()
            lines = reply.iter_lines()               # kept: a dropped iterator closes it
            streams.append((stream, lines))
            assert reply.status_code == 200 and next(lines) == "retry: 2000"
        wait_until(lambda: f"stream of {name} opened ({MAX_STREAMS} open)"
                   in web.cluster.log_text("web"), 5)
        assert "streams open already" in error_of(client.get("/api/stream"), 429, "throttled")
    finally:
        for stream, _ in streams:
            stream.__exit__(None, None, None)
    client.close()


@pytest.mark.timeout(60)
def test_status_lists_the_servers_the_coordinator_and_the_gateway(web):
    with web.client() as client:
        status = client.get("/api/status").json()
    rows = {row["id"]: row for row in status["servers"]}
    assert set(rows) == {1, 2, 3} and all(r["phase"] == "serving" and r["alive"] for r in rows.values())
    assert status["coordinator"] in rows and status["epoch"] is not None
    assert all("sums" not in r and "members" in r and "clock_offset_ms" in r for r in rows.values())
    assert status["gateway"]["requests"] > 0


@pytest.mark.timeout(60)
def test_a_stalled_broker_is_retried_with_the_same_rid_and_the_post_is_kept_once(web):
    name, client = web.user("retry")
    broker = web.cluster.group.procs["broker"]
    os.kill(broker.pid, signal.SIGSTOP)          # no reply to the first try (1.5 s timeout)
    timer = threading.Timer(2.0, os.kill, (broker.pid, signal.SIGCONT))
    timer.start()
    try:
        reply = client.post("/api/post", json={"text": "through a stalled broker"})
    finally:
        timer.join()
        os.kill(broker.pid, signal.SIGCONT)
    assert reply.status_code == 200, reply.text
    web.cluster.wait_serving({1, 2, 3})
    posts = client.get("/api/feed", params={"limit": 50}).json()["posts"]
    assert [p["text"] for p in posts if p["author"] == name] == ["through a stalled broker"]

    def tries() -> list[str] | None:
        """The sends of this user's post, once its reply is in web.log (INFO lines reach
        the file within 50 ms); every line of the file is in the common format."""
        lines = [common_log.parse_line(line) for line in web.cluster.log_text("web").splitlines()]
        assert all(line is not None and line["process"] == "web" for line in lines)
        rid = next((line["rest"].split("rid=")[1].split()[0] for line in lines
                    if "send broker | post" in line["rest"] and f"user={name}" in line["rest"]), None)
        if rid is None or not any(f"post ok rid={rid}" in line["rest"] for line in lines):
            return None
        return [line["rest"] for line in lines if f"rid={rid}" in line["rest"] and "send broker" in line["rest"]]
    sends = wait_until(tries, 5, what="the post's tries and reply in web.log")
    assert len(sends) >= 2 and "try=2" in sends[1], sends
    client.close()


@pytest.mark.timeout(60)
def test_no_broker_is_a_503_and_a_broker_started_later_or_anew_is_found(tmp_path):
    from common.config import load_config
    from common.keys import key_dir
    from common.processes import ProcessGroup, free_port_base
    config = load_config(port_base=free_port_base(), data_dir=str(tmp_path / "data"),
                         log_dir=str(tmp_path / "logs"))
    group = ProcessGroup(config, {"SOCIAL_REQUEST_DEADLINE": "3", "SOCIAL_REQUEST_TIMEOUT": "0.3"})
    port = local.usable_port(0)
    try:
        local.start(group, port)
        local.wait_ready(port, alive=lambda: group.alive(local.NAME))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=CSRF, timeout=10) as client:
            began = time.monotonic()
            message = error_of(client.get("/api/status"), 503, "unavailable")
            assert "broker" in message and time.monotonic() - began < 6
            error_of(client.post("/api/login", json={"user": "alice", "password": PASSWORD}),
                     503, "unavailable")
            group.start_broker()                        # it writes its key: found
            assert client.get("/api/status").json()["servers"] == []
            group.terminate("broker")
            for path in key_dir(config.data_dir).glob("broker.key*"):
                path.unlink()                           # a broker on a fresh folder: a new key
            group.start_broker()
            assert client.get("/api/status").json()["servers"] == []
        log = tmp_path / "logs" / "web.log"          # INFO lines reach it within 50 ms
        wait_until(lambda: "the broker's key changed" in log.read_text() and
                   "try=2" in log.read_text(), 5, what="the key change and the retry in web.log")
    finally:
        group.stop_all()


# --- one write per answer (web/http_protocol.py) -----------------------------------------
class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str):
        return f"info:{name}"


def test_one_write_gathers_a_loop_turn_and_flushes_before_closing():
    import asyncio

    from web.http_protocol import OneWrite

    async def scenario() -> FakeTransport:
        real = FakeTransport()
        wrapped = OneWrite(real, asyncio.get_running_loop())
        wrapped.write(b"HTTP/1.1 200 OK\r\n\r\n")
        wrapped.write(b"{}")
        assert real.writes == []                       # not before the turn ends
        await asyncio.sleep(0)
        assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
        wrapped.write(b"last")
        wrapped.close()                                # what is gathered goes out first
        assert real.writes[-1] == b"last" and real.closed
        await asyncio.sleep(0)
        assert len(real.writes) == 2                   # the queued flush found nothing
        assert wrapped.get_extra_info("peername") == "info:peername"
        return real
    asyncio.run(scenario())
