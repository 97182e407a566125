"""The CLI on its own: what it refuses before sending anything, accounts
(register, login, logout, no session), and what ``post``, ``feed`` and ``status``
print, against the fake broker of tests/fake_broker.py; and what it says when the
broker is unreachable or its key is missing or malformed.
"""
from __future__ import annotations

import json
import time

import pytest
import zmq
from typer.testing import CliRunner

from clients.cli import app
from clients.user_state import UserState
from common import protocol
from tests.fake_broker import reply, start_broker


pytestmark = pytest.mark.timeout(30)


# --- CLI ---------------------------------------------------------------------------
@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Runs the CLI with its folders in tmp_path and no SOCIAL_* from outside."""
    for name in ("USER", "PORT_BASE", "HOST", "DATA_DIR", "LOG_DIR", "REQUEST_DEADLINE",
                 "REQUEST_TIMEOUT", "CLOCK_OFFSET", "CLOCK_CHAOS", "PASSWORD"):
        monkeypatch.delenv(f"SOCIAL_{name}", raising=False)
    runner = CliRunner()

    def invoke(*args: str, port: int = 45000):
        return runner.invoke(app, ["--data-dir", str(tmp_path / "data"),
                                   "--log-dir", str(tmp_path / "logs"),
                                   "--port-base", str(port), "--timeout", "3", *args])

    return invoke


def saved_state(tmp_path, user: str) -> UserState:
    return UserState.load(tmp_path / "data" / "clients" / f"{user}.json")


@pytest.mark.parametrize("text, error", [("", "error: text must not be empty"),
                                         ("  ", "error: text must not be empty")])
def test_cli_empty_post_fails_locally_with_exit_code_1(cli, tmp_path, text, error):
    result = cli("--user", "alice", "post", text)
    assert result.exit_code == 1
    assert result.stderr.strip() == error
    assert result.stdout == ""
    assert saved_state(tmp_path, "alice").token is None


def test_cli_needs_a_user_for_everything_but_status(cli):
    result = cli("feed")
    assert result.exit_code == 1
    assert "feed needs a user" in result.stderr


def test_cli_refuses_a_bad_user_name(cli, tmp_path):
    result = cli("--user", "../evil", "users")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --user must match")
    assert not (tmp_path / "evil.json").exists()


def account_broker(start_broker, post: dict, accounts: set[str]):
    """A fake broker that knows accounts: login fails ``no_account`` for a name not
    in ``accounts`` (register adds it); everything else is answered ``post``."""
    def script(m, n):
        msg = m.msg
        if msg.op == protocol.OP_LOGIN and msg.user not in accounts:
            return [reply(msg.rid, code=protocol.ERR_NO_ACCOUNT, lamport=50)]
        if msg.op == protocol.OP_REGISTER:
            accounts.add(msg.user)
            return [reply(msg.rid, {"user": msg.user, "new": True}, lamport=50)]
        if msg.op == protocol.OP_LOGIN:
            return [reply(msg.rid, {"user": msg.user, "expires": time.time() + 3600}, lamport=50)]
        return [reply(msg.rid, {"post": post, "replicas": 3}, lamport=50)]
    return start_broker(script)


def test_cli_with_a_password_registers_logs_in_once_and_prints_one_json_document(
        cli, tmp_path, start_broker, monkeypatch):
    monkeypatch.setenv("SOCIAL_PASSWORD", "secret-for-tests")
    post = {"id": "p1", "author": "alice", "text": "hi", "lamport": 7, "timestamp": 1.0}
    broker = account_broker(start_broker, post, set())
    first = cli("--user", "alice", "post", "hi", "--json", port=broker.port)
    assert first.exit_code == 0, first.stderr
    assert json.loads(first.stdout) == {"post": post, "replicas": 3, "server": 1}
    assert broker.ops == ["login", "register", "login", "post"]
    login, post_request = broker.requests[2].msg, broker.requests[3].msg
    assert login.args.password == "secret-for-tests" and len(login.token) >= 43
    assert post_request.token == login.token, "the request carries the session's token"
    state = saved_state(tmp_path, "alice")
    assert state.token == login.token and state.lamport == 57

    second = cli("--user", "alice", "--json", "users", port=broker.port)
    assert second.exit_code == 0, second.stderr
    assert json.loads(second.stdout)["server"] == 1
    assert broker.ops == ["login", "register", "login", "post", "users"], "logged in once"
    assert broker.requests[-1].msg.token == login.token
    assert broker.requests[-1].lamport == 58, "the Lamport clock survived the restart"


def test_cli_without_a_session_sends_no_token_and_the_servers_say_why(cli, start_broker):
    broker = start_broker(lambda m, n: [reply(m.msg.rid, code=protocol.ERR_UNAUTHORIZED,
                                              error="alice is not logged in")])
    result = cli("--user", "alice", "users", port=broker.port)
    assert result.exit_code == 1 and "not logged in" in result.stderr
    assert broker.ops == ["users"] and broker.requests[0].msg.token is None


def test_cli_register_reads_the_password_from_stdin_and_logout_forgets_the_token(
        cli, tmp_path, start_broker):
    broker = account_broker(start_broker, {}, set())
    runner_input = "a-long-password\n"
    result = CliRunner().invoke(app, ["--data-dir", str(tmp_path / "data"),
                                      "--log-dir", str(tmp_path / "logs"),
                                      "--port-base", str(broker.port), "--timeout", "3",
                                      "--user", "alice", "register", "--password-stdin"],
                                input=runner_input)
    assert result.exit_code == 0, result.stderr
    assert broker.ops == ["register", "login"]
    assert broker.requests[0].msg.args.password == "a-long-password"
    assert saved_state(tmp_path, "alice").token == broker.requests[1].msg.token
    out = cli("--user", "alice", "logout", port=broker.port)
    assert out.exit_code == 0, out.stderr
    assert broker.ops[-1] == "logout" and broker.requests[-1].msg.token == \
        broker.requests[1].msg.token
    assert saved_state(tmp_path, "alice").token is None
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*"))
    assert "a-long-password" not in logs and broker.requests[1].msg.token not in logs


def test_cli_feed_shows_one_line_per_post(cli, start_broker):
    posts = [{"id": "a", "author": "bob", "text": "hello, world", "lamport": 42,
              "timestamp": time.time(), "followed": True},
             {"id": "b", "author": "carol", "text": "hi", "lamport": 40,
              "timestamp": time.time(), "followed": False}]
    broker = start_broker(lambda m, n: [reply(m.msg.rid, {"posts": posts})])
    result = cli("--user", "alice", "feed", "--limit", "5", "--server", "2", port=broker.port)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert lines[1].startswith("[L=42 ") and lines[1].endswith("] bob: hello, world  (followed)")
    assert lines[2].endswith("] carol: hi")
    assert protocol.to_builtins(broker.requests[-1].msg.args) == {"limit": 5}
    assert broker.requests[-1].msg.server == 2


def test_cli_status_needs_no_user_and_shows_a_table(cli, start_broker):
    servers = [{"id": 1, "alive": True, "phase": "serving", "events": 10,
                "digest": "0123456789abcdef", "lamport": 33, "lag": 0}]
    broker = start_broker(lambda m, n: [reply(m.msg.rid, {"servers": servers,
                                                              "coordinator": 1, "epoch": 2},
                                              server=None)])
    result = cli("status", port=broker.port)
    assert result.exit_code == 0, result.stderr
    header, row, *rest = result.stdout.splitlines()
    assert header.split() == ["id", "alive", "phase", "events", "digest", "lamport"]
    assert row.split() == ["1", "yes", "serving", "10", "01234567", "33"]
    assert rest[:2] == ["coordinator: 1", "epoch: 2"]
    assert rest[2].startswith("offset_ms: ")                 # the legend
    assert broker.ops == ["status"] and broker.requests[0].msg.user is None
    wide = cli("status", "--wide", port=broker.port)
    header, row, *rest = wide.stdout.splitlines()
    assert header.split() == ["id", "alive", "phase", "events", "digest", "lamport", "lag"]
    assert row.split() == ["1", "yes", "serving", "10", "0123456789ab", "33", "0"]
    assert rest == ["coordinator: 1", "epoch: 2"]


def test_cli_reports_an_unreachable_broker(cli, monkeypatch):
    monkeypatch.setenv("SOCIAL_BROKER_KEY", zmq.curve_keypair()[0].decode())
    result = cli("--user", "alice", "--timeout", "0.3", "users")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no reply from the broker at tcp://127.0.0.1:45000")


def test_cli_without_the_brokers_key_says_where_it_looked(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("SOCIAL_BROKER_KEY", raising=False)
    result = cli("--user", "alice", "users")
    assert result.exit_code == 1
    waiting, error = result.stderr.splitlines()         # a broker starting writes it at once
    assert waiting.startswith("waiting for the broker at tcp://127.0.0.1:45000")
    assert error.startswith(f"error: no broker key: {tmp_path / 'data' / 'keys'}")
    assert "SOCIAL_BROKER_KEY" in result.stderr


def test_cli_refuses_a_malformed_broker_key(cli, monkeypatch):
    monkeypatch.setenv("SOCIAL_BROKER_KEY", "not-a-key")
    result = cli("--user", "alice", "users")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: SOCIAL_BROKER_KEY: not a CURVE public key")
