"""Bad input gets a clear error and changes nothing: the CLI and the frontend.

The CLI cases and the frontend frames share one cluster (module scope): each
case checks that the servers' digests are the same before and after it.
Garbage on the other sockets is in test_garbage.py.
"""
from __future__ import annotations

import pytest

from common import protocol as P
from tests.bad_input import (MISSING, ONE, REQ, SERVERS, assert_unchanged, body, digest,
                             heartbeat)
from tests.harness import Cluster


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


FRAME_CASES = {
    "1 frame": [REQ],
    "2 frames": [REQ, ONE],
    "5 frames": [REQ, ONE, body(), b"x", b"y"],
    "empty frames": [b"", b"", b""],
    "non-JSON body": [REQ, ONE, b"{not json"],
    "invalid UTF-8 body": [REQ, ONE, b"\xff\xfe\xfd"],
    "JSON array body": [REQ, ONE, b"[1, 2, 3]"],
    "JSON string body": [REQ, ONE, b'"hello"'],
    "JSON null body": [REQ, ONE, b"null"],
    "unknown type": [b"NOPE", ONE, body()],
    "non-ASCII type": [b"\xffREQ", ONE, body()],
    "a reply sent as a request": [P.REPLY.encode(), ONE, P.dumps({"rid": "x", "ok": True,
                                                                    "server": 1, "time": 1.0})],
    "a server heartbeat on the frontend": [P.HEARTBEAT.encode(), ONE, P.dumps(heartbeat(1))],
    "lamport not a number": [REQ, b"abc", body()],
    "negative lamport": [REQ, b"-1", body()],
    "lamport of 40 digits": [REQ, b"9" * 40, body()],
    "missing rid": [REQ, ONE, body(rid=MISSING)],
    "missing op": [REQ, ONE, body(op=MISSING)],
    "missing args": [REQ, ONE, body(args=MISSING)],
    "missing time": [REQ, ONE, body(time=MISSING)],
    "missing text": [REQ, ONE, body(args={})],
    "rid is a number": [REQ, ONE, body(rid=5)],
    "empty rid": [REQ, ONE, body(rid="")],
    "rid of 65 characters": [REQ, ONE, body(rid="r" * 65)],
    "op is a number": [REQ, ONE, body(op=7)],
    "unknown op": [REQ, ONE, body(op="drop_everything")],
    "user is a number": [REQ, ONE, body(user=5)],
    "no user for a post": [REQ, ONE, body(user=None)],
    "uppercase user": [REQ, ONE, body(user="ALICE")],
    "args is a list": [REQ, ONE, body(args=["hi"])],
    "text is a number": [REQ, ONE, body(args={"text": 5})],
    "text is null": [REQ, ONE, body(args={"text": None})],
    "server is a string": [REQ, ONE, body(server="1")],
    "server is true": [REQ, ONE, body(server=True)],
    "server 0": [REQ, ONE, body(server=0)],
    "server 100": [REQ, ONE, body(server=100)],
    "time is a string": [REQ, ONE, body(time="now")],
    "limit is a string": [REQ, ONE, body(op="feed", args={"limit": "5"})],
    "limit is true": [REQ, ONE, body(op="feed", args={"limit": True})],
    "limit is a float": [REQ, ONE, body(op="feed", args={"limit": 2.5})],
    "follow target is a dict": [REQ, ONE, body(op="follow", args={"target": {}})],
    "register without a user": [REQ, ONE, body(op="register", user=None, args={})],
    "body over 64 KiB": [REQ, ONE, body(args={"text": "x" * (65 * 1024)})],
    "many frames": [REQ] * 100,
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
        reply = quiet.raw_request(sock, [REQ, ONE, body(rid="mine-1", args={"text": ""})])
    finally:
        sock.close(0)
    assert reply.body["rid"] == "mine-1" and reply.body["ok"] is False
    assert "empty" in reply.body["error"]


def test_a_body_beyond_the_socket_size_limit_is_dropped_and_the_broker_stays_up(quiet):
    before = digest(quiet)
    sock = quiet.dealer()
    try:
        reply = quiet.raw_request(sock, [REQ, ONE, b"x" * (1024 * 1024)], timeout=2)
    finally:
        sock.close(0)
    assert reply is None or reply.body["ok"] is False
    assert quiet.alive("broker")
    assert quiet.cli("alice", "users")["users"] == ["alice", "bob"]
    assert_unchanged(quiet, before)
