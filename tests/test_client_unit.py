"""The user side on its own: saved state, the Lazy Pirate connection, the CLI.

The broker here is a fake: a ROUTER on a free port, served by a background
thread that decodes each request as the broker's frontend does
(``protocol.CLIENT_TO_BROKER``) and answers with whatever the test scripts, as
real frames (``protocol.encode``).
"""
from __future__ import annotations

import json
import threading
import time
from typing import Callable

import pytest
import zmq
from typer.testing import CliRunner

from clients.cli import app
from clients.connection import ClientError, Connection
from clients.user_state import UserState
from common import protocol
from common.processes import wait_until
from common.clock import LamportClock, PhysicalClock
from common.config import Config
from common.paths import joined

pytestmark = pytest.mark.timeout(30)

Frames = list[bytes]
Script = Callable[[protocol.Incoming, int], list[Frames]]
"""Given the n-th request (from 0), the frames to send back (maybe none)."""


def reply(rid: str, result: dict | None = None, *, lamport: int = 1, server: int | None = 1,
          at: float | None = None, code: str | None = None, error: str | None = None) -> Frames:
    """A REP as a broker sends it: a success with ``result``, or an error with ``code``."""
    when = time.time() if at is None else at
    if code is None:
        msg = protocol.Reply(rid=rid, ok=True, server=server, time=when,
                             result=result if result is not None else {})
    else:
        msg = protocol.Reply(rid=rid, ok=False, server=server, time=when, code=code,
                             error=error or code)
    protocol.validate(msg)
    return protocol.encode(msg, lamport)


class FakeBroker:
    """A ROUTER that answers requests by a script; its thread owns the socket."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[protocol.Incoming] = []
        self.port = 0
        self.public, self.secret = zmq.curve_keypair()
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(5), "fake broker did not start"

    def _serve(self) -> None:
        context = zmq.Context()
        socket = context.socket(zmq.ROUTER)
        socket.linger = 0
        socket.curve_publickey, socket.curve_secretkey = self.public, self.secret
        socket.curve_server = True          # stonehouse, as the broker's frontend
        self.port = socket.bind_to_random_port("tcp://127.0.0.1", 20000, 60000)
        self._ready.set()
        while not self._stopping.is_set():
            if not socket.poll(20):
                continue
            message = protocol.decode(socket.recv_multipart(), protocol.CLIENT_TO_BROKER)
            self.requests.append(message)
            for answer in self.script(message, len(self.requests) - 1):
                socket.send_multipart([*message.envelope, *answer])
        socket.close(linger=0)
        context.term()

    @property
    def ops(self) -> list[str]:
        return [message.msg.op for message in self.requests]

    @property
    def rids(self) -> set[str]:
        return {message.msg.rid for message in self.requests}

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)


@pytest.fixture
def start_broker(monkeypatch):
    brokers: list[FakeBroker] = []

    def start(script: Script) -> FakeBroker:
        brokers.append(FakeBroker(script))
        # the CLI finds a remote broker's key here (no key folder in these tests)
        monkeypatch.setenv("SOCIAL_BROKER_KEY", brokers[-1].public.decode())
        return brokers[-1]

    yield start
    for broker in brokers:
        broker.stop()


def ok_to_everything(message: protocol.Incoming, n: int) -> list[Frames]:
    return [reply(message.msg.rid, {"echo": message.msg.op})]


def connect(broker: FakeBroker, tmp_path, lamport: LamportClock | None = None,
            clock: PhysicalClock | None = None, **timing) -> Connection:
    config = Config(port_base=broker.port, data_dir=str(tmp_path / "data"),
                    log_dir=str(tmp_path / "logs"),
                    **({"request_timeout": 0.3, "request_deadline": 5.0} | timing)).validate()
    return Connection(config, "alice", lamport or LamportClock(), clock or PhysicalClock(),
                      broker_key=broker.public)


@pytest.fixture
def connection_to(tmp_path):
    connections: list[Connection] = []

    def open_connection(broker: FakeBroker, **kwargs) -> Connection:
        connections.append(connect(broker, tmp_path, **kwargs))
        return connections[-1]

    yield open_connection
    for connection in connections:
        connection.close()


# --- UserState ----------------------------------------------------------------
TOKEN = "t" * 43


def test_user_state_round_trips_through_its_file_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "clients" / "alice.json"
    UserState(path, lamport=42, clock_offset=-0.25, token=TOKEN, expires=2e9).save()
    assert UserState.load(path) == UserState(path, 42, -0.25, TOKEN, 2e9)
    assert [p.name for p in path.parent.iterdir()] == ["alice.json"], "no temp file left"
    assert path.stat().st_mode & 0o777 == 0o600, oct(path.stat().st_mode)
    assert path.parent.stat().st_mode & 0o077 == 0, oct(path.parent.stat().st_mode)


def test_missing_state_file_gives_a_fresh_state(tmp_path):
    path = tmp_path / "nobody.json"
    assert UserState.load(path) == UserState(path, 0, 0.0, None, 0.0)


def test_a_state_file_of_before_accounts_loads_without_a_session(tmp_path):
    path = tmp_path / "alice.json"
    path.write_bytes(b'{"lamport": 7, "clock_offset": 0.5, "registered": true}')
    assert UserState.load(path) == UserState(path, 7, 0.5, None, 0.0)


def test_an_expired_token_is_not_used(tmp_path):
    state = UserState(tmp_path / "a.json", token=TOKEN, expires=1000.0)
    assert state.session(900.0) == TOKEN and state.session(999.0) is None


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"",
                                     b'{"lamport": "7", "clock_offset": 0, "registered": true}',
                                     b'{"lamport": 7}'])
def test_corrupt_state_file_gives_a_fresh_state(tmp_path, content):
    path = tmp_path / "alice.json"
    path.write_bytes(content)
    assert UserState.load(path) == UserState(path)


@pytest.mark.parametrize("folder", ["data", "data/", "./data", "a//b/./c", "/tmp/x", "//net/x",
                                    "///a", "/", ".", "./", "", "../x", "~/d"])
def test_a_command_spells_its_paths_as_pathlib_would(folder):
    """A command names its state file, log and the broker's key without pathlib:
    every message naming one reads as it did with it."""
    from pathlib import Path
    for names in [(), ("client-alice.log",), ("clients", "alice.json")]:
        assert joined(folder, *names) == str(Path(folder, *names))
    config = Config(data_dir=folder, log_dir=folder)
    assert config.client_state_path("alice") == Path(folder) / "clients" / "alice.json"
    assert config.log_path("broker") == Path(folder) / "broker.log"


# --- Connection ------------------------------------------------------------------
def test_request_returns_the_result_with_the_answering_server(start_broker, connection_to):
    broker = start_broker(lambda m, n: [reply(m.msg.rid, {"replicas": 3}, server=2)])
    result = connection_to(broker).request(protocol.OP_POST, {"text": "hello"})
    assert result == {"replicas": 3, "server": 2}
    req = broker.requests[0].msg
    assert (req.op, req.user, protocol.to_builtins(req.args), req.server) == \
        ("post", "alice", {"text": "hello"}, None)


def test_a_retried_request_keeps_its_rid(start_broker, connection_to):
    broker = start_broker(lambda m, n: [] if n == 0 else ok_to_everything(m, n))
    result = connection_to(broker).request(protocol.OP_FEED, {"limit": 5}, server=3)
    assert result == {"echo": "feed", "server": 1}
    assert len(broker.requests) == 2 and len(broker.rids) == 1
    assert broker.requests[1].msg.server == 3


def test_a_listen_stopped_by_ctrl_c_is_unparked_as_a_later_try(start_broker, connection_to,
                                                                monkeypatch):
    """Ctrl-C while a long poll is parked: its cancel (the same rid, wait 0) goes out
    as a later try than the parked one, so a server that never held it writes a copy
    that outranks the parked one's (``ListenLoop.cancel``)."""
    broker = start_broker(lambda m, n: [] if n == 0 else ok_to_everything(m, n))
    connection = connection_to(broker)
    body = connection.build(protocol.OP_LISTEN, {"wait": 25.0, "since": 0})
    real_wait = connection._wait_for_reply

    def interrupted(*args):
        wait_until(lambda: broker.requests, 5.0, interval=0.01, what="the parked listen")
        raise KeyboardInterrupt
    monkeypatch.setattr(connection, "_wait_for_reply", interrupted)
    with pytest.raises(KeyboardInterrupt):
        connection.exchange(body)
    monkeypatch.setattr(connection, "_wait_for_reply", real_wait)
    assert connection.exchange(protocol.with_args(body, wait=0.0)) == {"echo": "listen",
                                                                        "server": 1}
    parked, cancel = (r.msg for r in broker.requests)
    assert parked.rid == cancel.rid and cancel.args.wait == 0.0
    assert cancel.attempt > parked.attempt


def test_silence_until_the_deadline_raises_unavailable(start_broker, connection_to):
    broker = start_broker(lambda m, n: [])
    connection = connection_to(broker, request_timeout=0.1, request_deadline=0.45)
    started = time.monotonic()
    with pytest.raises(ClientError) as caught:
        connection.request(protocol.OP_USERS, {})
    assert time.monotonic() - started < 2.0
    assert caught.value.code == protocol.ERR_UNAVAILABLE
    assert f"no reply from the broker at tcp://127.0.0.1:{broker.port} after" in str(caught.value)
    wait_until(lambda: len(broker.requests) >= 3, 5.0, interval=0.01, what="three requests")
    assert len(broker.rids) == 1


def test_a_stale_reply_with_another_rid_is_ignored(start_broker, connection_to):
    broker = start_broker(lambda m, n: [reply("stale-rid", code=protocol.ERR_BAD_REQUEST),
                                        reply("stale-rid", {"wrong": True}),
                                        reply(m.msg.rid, {"right": True})])
    assert connection_to(broker).request(protocol.OP_USERS, {}) == {"right": True, "server": 1}


def test_a_retryable_error_is_retried_with_the_same_rid(start_broker, connection_to):
    def unavailable_once(m, n):
        if n == 0:
            return [reply(m.msg.rid, code=protocol.ERR_UNAVAILABLE, server=None)]
        return ok_to_everything(m, n)

    broker = start_broker(unavailable_once)
    assert connection_to(broker).request(protocol.OP_USERS, {})["echo"] == "users"
    assert len(broker.requests) == 2 and len(broker.rids) == 1


def test_a_final_error_raises_client_error_with_its_message(start_broker, connection_to):
    broker = start_broker(lambda m, n: [reply(m.msg.rid, code=protocol.ERR_UNKNOWN_USER,
                                              error="no user named bob")])
    with pytest.raises(ClientError) as caught:
        connection_to(broker).request(protocol.OP_FOLLOW, {"target": "bob"})
    assert (caught.value.code, str(caught.value)) == (protocol.ERR_UNKNOWN_USER,
                                                      "no user named bob")
    assert len(broker.requests) == 1


def test_garbage_reply_frames_are_ignored(start_broker, connection_to):
    def garbage(m: protocol.Incoming) -> list[Frames]:
        valid = reply(m.msg.rid, {"wrong": True}, lamport=500)
        return [[b"junk"], [b"REP", b"x", b"{}"], [b"REP", b"1", b"not json"],
                [b"REP", b"1", b'{"rid": 1}'], [b"\xff", b"1", b"{}"], [b"NOPE", b"1", b"{}"],
                [b"REP", b"%d" % protocol.MAX_STAMP, valid[2]],        # stamp out of range
                [b"REP", b"-1", valid[2]],
                [b"REP", b"1", valid[2][:-1] + b', "extra": 1}'],      # an unknown field
                protocol.encode(m.msg, 500),                           # not a reply at all
                [b"", *valid]]                                         # an envelope too many

    lamport = LamportClock()
    broker = start_broker(lambda m, n: garbage(m) + ok_to_everything(m, n))
    assert connection_to(broker, lamport=lamport).request(protocol.OP_USERS, {})["echo"] == "users"
    assert lamport.value == 2, "no refused message's stamp was merged: max(1, 1) + 1"


def test_the_reply_lamport_stamp_is_merged(start_broker, connection_to):
    broker = start_broker(lambda m, n: [reply(m.msg.rid, lamport=100)])
    lamport = LamportClock(5)
    connection_to(broker, lamport=lamport).request(protocol.OP_USERS, {})
    assert broker.requests[0].lamport == 6, "the send ticks first"
    assert lamport.value == 101, "max(6, 100) + 1"


def test_a_server_reply_corrects_the_clock_by_cristian(start_broker, connection_to):
    broker = start_broker(lambda m, n: [reply(m.msg.rid, at=time.time() + 10.0)])
    clock = PhysicalClock()
    connection = connection_to(broker, clock=clock)
    connection.request(protocol.OP_USERS, {})
    assert clock.skew() == pytest.approx(10.0, abs=0.5)
    assert connection.clock_correction == pytest.approx(10.0, abs=0.5)


class FrozenClock(PhysicalClock):
    """Reads the same time until adjusted, so an rtt cannot move it."""

    def now(self) -> float:
        return 1_000_000.0 + self._offset


def test_a_clock_within_the_round_trip_is_left_alone(start_broker, connection_to):
    broker = start_broker(lambda m, n: [reply(m.msg.rid, at=1_000_000.0)])
    clock = FrozenClock()
    connection = connection_to(broker, clock=clock)
    connection.request(protocol.OP_USERS, {})
    assert clock.now() == 1_000_000.0 and connection.clock_correction == 0.0


def test_a_broker_reply_leaves_the_clock_alone(start_broker, connection_to):
    broker = start_broker(lambda m, n: [reply(m.msg.rid, at=time.time() + 10.0,
                                              server=None)])
    clock = PhysicalClock()
    connection_to(broker, clock=clock).request(protocol.OP_STATUS, {})
    assert abs(clock.skew()) < 0.5


def test_invalid_input_fails_before_anything_is_sent(start_broker, connection_to):
    broker = start_broker(ok_to_everything)
    lamport = LamportClock()
    connection = connection_to(broker, lamport=lamport)
    for op, args in [(protocol.OP_POST, {"text": "  "}), (protocol.OP_POST, {"text": "x" * 501}),
                     (protocol.OP_FOLLOW, {"target": "alice"}), (protocol.OP_DM, {"to": "Bob!",
                                                                                   "text": "hi"})]:
        with pytest.raises(ClientError) as caught:
            connection.request(op, args)
        assert caught.value.code == protocol.ERR_BAD_REQUEST
    assert lamport.value == 0, "no send happened"


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
