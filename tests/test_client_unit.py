"""The user side on its own: saved state (``UserState``) and the Lazy Pirate
connection (rids kept across retries, deadlines, stale and garbage replies,
Lamport stamps merged, the clock corrected by Cristian).

The broker is the fake of tests/fake_broker.py: it answers with whatever the
test scripts, as real frames.
"""
from __future__ import annotations

import time

import pytest

from clients.connection import ClientError
from clients.user_state import UserState
from common import protocol
from common.clock import LamportClock, PhysicalClock
from common.config import Config
from common.paths import joined
from common.processes import wait_until
from tests.fake_broker import Frames, connection_to, ok_to_everything, reply, start_broker


pytestmark = pytest.mark.timeout(30)


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
