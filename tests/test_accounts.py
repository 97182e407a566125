"""Accounts end to end (issue 12): real broker and servers, the CLI as a subprocess.

One cluster for the module, with the real argon2 parameters (not the harness's cheap
ones) and a long login throttle (so the throttled test cannot race its expiry). Each
test uses names of its own. Every refusal is checked to change nothing: the servers'
digest is the same before and after.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from clients.connection import ClientError
from common import protocol as P
from common.processes import ROOT
from tests.harness import Cluster, new_token
from tests.hostile_helpers import collect_replies, frames, raw_request, request, socket

pytestmark = pytest.mark.timeout(120)

SERVERS = (1, 2, 3)
REAL_ACCOUNTS = {"SOCIAL_ARGON2_TIME_COST": "3", "SOCIAL_ARGON2_MEMORY_KIB": "12288",
                 "SOCIAL_AUTH_HASHES_PER_S": "20", "SOCIAL_LOGIN_DELAY": "120"}
PASSWORDS: set[str] = set()
"""Every password this module used: none may appear in any log or data file."""
TOKENS: set[str] = set()


def pw(text: str) -> str:
    PASSWORDS.add(text)
    return text


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("accounts"), REAL_ACCOUNTS)
    try:
        cluster.start(3)
        cluster.wait_serving(SERVERS, timeout=30)
        yield cluster
    except BaseException:
        print(cluster.log_tails())
        raise
    finally:
        cluster.stop()


def cli(c: Cluster, user: str, *args: str, password: str | None = None,
        env_password: str | None = None) -> subprocess.CompletedProcess:
    """``python -m clients --user USER ARGS --json``, the password on stdin (for
    ``--password-stdin``) and ``SOCIAL_PASSWORD`` only when given."""
    env = {k: v for k, v in c.env.items() if k != "SOCIAL_PASSWORD"}
    if env_password is not None:
        env["SOCIAL_PASSWORD"] = env_password
    command = [sys.executable, "-m", "clients", "--user", user, *args, "--json"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          input=None if password is None else password + "\n", timeout=60)


def ok(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def digest(c: Cluster) -> str:
    rows = c.wait_converged(timeout=15)
    [value] = {row["digest"] for row in rows.values()}
    return value


def refused(c: Cluster, user: str, op: str, args: dict, token: str | None,
            server: int | None = None) -> ClientError:
    with pytest.raises(ClientError) as caught:
        c.request(user, op, args, server=server, token=token)
    return caught.value


def raw_without_token(c: Cluster, user: str, op: str, args: dict) -> dict:
    sock = c.dealer()
    try:
        reply = raw_request(sock, frames("REQ", request(op, user, args)), timeout=10)
    finally:
        sock.close(0)
    assert reply is not None, f"no reply to {op} without a token"
    return reply["body"]


def state_file(c: Cluster, user: str) -> Path:
    return c.config.client_state_path(user)


# --- register and login --------------------------------------------------------------------------
def test_register_then_register_again_is_refused_and_the_state_file_is_private(c):
    first = ok(cli(c, "ann", "register", "--password-stdin", password=pw("ann-first-pass")))
    assert first["user"] == "ann" and first["expires"] > time.time() + 86400
    path = state_file(c, "ann")
    assert path.stat().st_mode & 0o777 == 0o600, oct(path.stat().st_mode)
    token = json.loads(path.read_text())["token"]
    TOKENS.add(token)
    assert len(token) >= 43
    before = digest(c)
    again = cli(c, "ann", "register", "--password-stdin", password=pw("ann-other-pass"))
    assert again.returncode == 1 and "taken" in again.stderr, again.stderr
    assert digest(c) == before
    # the first password still logs in; the second never does
    assert ok(cli(c, "ann", "login", "--password-stdin", password="ann-first-pass"))["user"] == "ann"
    wrong = cli(c, "ann", "login", "--password-stdin", password="ann-other-pass")
    assert wrong.returncode == 1 and "wrong password" in wrong.stderr, wrong.stderr


def test_a_wrong_password_gets_no_session_and_changes_nothing(c):
    ok(cli(c, "ben", "register", "--password-stdin", password=pw("ben-right-pass")))
    before = digest(c)
    wrong = cli(c, "ben", "login", "--password-stdin", password=pw("ben-wrong-pass"))
    assert wrong.returncode == 1 and "wrong password" in wrong.stderr, wrong.stderr
    assert digest(c) == before
    nobody = cli(c, "nobody_here", "login", "--password-stdin", password=pw("whatever-pass"))
    assert nobody.returncode == 1 and "register first" in nobody.stderr, nobody.stderr


def test_a_command_with_social_password_logs_in_by_itself(c):
    posted = ok(cli(c, "cid", "post", "hello from a script", env_password=pw("cid-script-pass")))
    assert posted["post"]["author"] == "cid"
    assert json.loads(state_file(c, "cid").read_text())["token"]
    TOKENS.add(json.loads(state_file(c, "cid").read_text())["token"])
    without = cli(c, "dan", "post", "no session")
    assert without.returncode == 1 and "not logged in" in without.stderr, without.stderr


# --- authorization -------------------------------------------------------------------------------
def test_alices_requests_with_bobs_token_or_none_are_refused_and_change_nothing(c):
    alice, bob = c.login("alice"), c.login("bob")
    TOKENS.update((alice, bob))
    c.request("bob", P.OP_POST, {"text": "bob was here"})
    before = digest(c)
    writes = [(P.OP_POST, {"text": "forged"}), (P.OP_FOLLOW, {"target": "bob"}),
              (P.OP_DM, {"to": "bob", "text": "forged"}), (P.OP_NOTIFICATIONS, {}),
              (P.OP_LISTEN, {"wait": 0.0, "since": 0}), (P.OP_FEED, {"limit": 5}),
              (P.OP_USERS, {}), (P.OP_LOGOUT, {})]
    for op, args in writes:
        assert refused(c, "alice", op, args, bob).code == P.ERR_UNAUTHORIZED, op
        body = raw_without_token(c, "alice", op, args)
        assert (body["ok"], body["code"]) == (False, P.ERR_UNAUTHORIZED), (op, body)
    forged = refused(c, "alice", P.OP_POST, {"text": "forged"}, new_token())
    assert forged.code == P.ERR_UNAUTHORIZED
    assert digest(c) == before, "a refused request changed the servers' events"
    assert c.request("alice", P.OP_FEED, {"limit": 5}, token=alice)["posts"]


def test_chat_is_served_only_to_its_two_users(c):
    c.login("bo")
    c.request("amy", P.OP_DM, {"to": "bo", "text": "just between us"})
    carol = c.login("cat")
    TOKENS.add(carol)
    before = digest(c)
    for user, other in (("amy", "bo"), ("bo", "amy")):
        error = refused(c, user, P.OP_CHAT, {"with": other, "limit": 10}, carol)
        assert error.code == P.ERR_UNAUTHORIZED
    own = c.request("cat", P.OP_CHAT, {"with": "amy", "limit": 10})
    assert own["messages"] == []
    theirs = c.request("bo", P.OP_CHAT, {"with": "amy", "limit": 10})
    assert [m["text"] for m in theirs["messages"]] == ["just between us"]
    assert digest(c) == before


def test_notifications_and_listen_are_served_only_to_their_own_user(c):
    c.login("star")
    c.request("fan", P.OP_FOLLOW, {"target": "star"})
    c.request("star", P.OP_POST, {"text": "for my followers"})
    intruder = c.login("snoop")
    before = digest(c)
    assert refused(c, "fan", P.OP_NOTIFICATIONS, {}, intruder).code == P.ERR_UNAUTHORIZED
    assert refused(c, "fan", P.OP_LISTEN, {"wait": 1.0, "since": 0},
                   intruder).code == P.ERR_UNAUTHORIZED
    assert digest(c) == before, "nothing was marked shown"
    shown = c.request("fan", P.OP_NOTIFICATIONS, {})["notifications"]
    assert [p["text"] for p in shown] == ["for my followers"]


def test_after_logout_the_old_token_is_refused_on_every_server(c):
    ok(cli(c, "eve", "register", "--password-stdin", password=pw("eve-secret-pass")))
    old = json.loads(state_file(c, "eve").read_text())["token"]
    TOKENS.add(old)
    for server in SERVERS:
        assert c.request("eve", P.OP_FEED, {"limit": 1}, server=server, token=old)
    assert ok(cli(c, "eve", "logout"))["logged_out"] is True
    assert json.loads(state_file(c, "eve").read_text())["token"] is None
    before = digest(c)
    for server in SERVERS:
        error = refused(c, "eve", P.OP_FEED, {"limit": 1}, old, server=server)
        assert error.code == P.ERR_UNAUTHORIZED, server
        error = refused(c, "eve", P.OP_POST, {"text": "after logout"}, old, server=server)
        assert error.code == P.ERR_UNAUTHORIZED, server
    assert digest(c) == before


# --- guessing -----------------------------------------------------------------------------------
def test_brute_force_logins_are_throttled_with_the_time_to_wait(c):
    c.login("vic", password=pw("vic-real-password"))
    conn = c.connection("vic", login=False)
    try:
        codes = []
        for i in range(5):
            with pytest.raises(ClientError) as caught:
                conn.request(P.OP_LOGIN, {"password": pw(f"guess-number-{i}")}, token=new_token())
            codes.append(caught.value.code)
        assert codes == [P.ERR_UNAUTHORIZED] * 5
        for password in ("guess-number-6", "vic-real-password"):
            with pytest.raises(ClientError) as caught:
                conn.request(P.OP_LOGIN, {"password": password}, token=new_token())
            assert caught.value.code == P.ERR_THROTTLED, caught.value
            assert "try again in" in str(caught.value) and " s" in str(caught.value)
    finally:
        conn.close()
    assert c.login("other_user", fresh=True), "another user is not throttled"
    broker_log = c.log_text("broker")
    assert "throttled" in broker_log


# --- one name, two servers at once ----------------------------------------------------------------
def test_a_name_registered_on_two_servers_at_once_has_one_owner_everywhere(c):
    endpoint = c.config.endpoint(c.config.frontend_port)
    socks = [socket(zmq.DEALER, endpoint, **c.curve_options()) for _ in range(2)]
    mine = {1: pw("twin-one-password"), 2: pw("twin-two-password")}
    try:
        bodies = {server: request(P.OP_REGISTER, "twin", {"password": mine[server]},
                                  rid=f"twin-on-{server}", server=server)
                  for server in (1, 2)}
        for sock, server in zip(socks, (1, 2)):
            sock.send_multipart(frames("REQ", bodies[server]))
        replies = {}
        for sock, server in zip(socks, (1, 2)):
            replies.update(collect_replies(sock, {f"twin-on-{server}"}, 20, "registrations"))
    finally:
        for sock in socks:
            sock.close(0)
    outcomes = {rid: (body["ok"], body.get("code")) for rid, body in replies.items()}
    assert sorted(outcomes.values(), key=str) == sorted(
        [(True, None), (False, P.ERR_NAME_TAKEN)], key=str), outcomes
    [winner] = [int(rid[-1]) for rid, (good, _) in outcomes.items() if good]
    digest(c)
    for server in SERVERS:                       # the same owner on every server
        for candidate, password in mine.items():
            conn = c.connection("twin", login=False)
            try:
                token = new_token()
                if candidate == winner:
                    conn.request(P.OP_LOGIN, {"password": password}, server, token=token)
                else:
                    with pytest.raises(ClientError) as caught:
                        conn.request(P.OP_LOGIN, {"password": password}, server, token=token)
                    assert caught.value.code == P.ERR_UNAUTHORIZED
            finally:
                conn.close()


# --- secrets at rest -------------------------------------------------------------------------------
def test_no_password_or_token_in_any_log_or_data_file(c):
    """Last in the module: every password used above, and every token (bar the user's
    own state file, which must hold it), is absent from every file the cluster wrote."""
    TOKENS.update(c.tokens.values())
    c.group.stop_all()                                     # logs flushed, data written
    found = []
    for path in Path(c.folder).rglob("*"):
        if not path.is_file():
            continue
        raw = path.read_bytes()
        for secret in PASSWORDS:
            if secret.encode() in raw:
                found.append(f"password in {path.relative_to(c.folder)}")
        if path.parent.name != "clients":
            for token in TOKENS:
                if token.encode() in raw:
                    found.append(f"token in {path.relative_to(c.folder)}")
    assert PASSWORDS and TOKENS
    assert not found, found
