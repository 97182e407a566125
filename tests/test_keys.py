"""common/keys.py: key files made once, whole and owner-only; the allowlist, re-read
when its folder changes; admit's argument checked; the ZAP policy of each domain."""
from __future__ import annotations

import multiprocessing
import os
import stat

import pytest
import zmq

from common import keys


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_keypair_is_made_once_owner_only_and_loaded_again(tmp_path):
    public, secret = keys.keypair(tmp_path, "server-1")
    folder = keys.key_dir(tmp_path)
    assert mode(folder) == 0o700 and mode(folder / "allowed") == 0o700
    assert mode(folder / "server-1.key_secret") == 0o600
    assert mode(folder / "server-1.key") == 0o600
    assert len(public) == len(secret) == 40
    assert keys.keypair(tmp_path, "server-1") == (public, secret)
    assert keys.load_public(folder / "server-1.key") == public
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


def test_a_loose_key_folder_is_tightened(tmp_path):
    folder = keys.key_dir(tmp_path)
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    keys.keypair(tmp_path, "broker")
    assert mode(folder) == 0o700


def _make(data_dir, queue) -> None:
    queue.put(keys.keypair(data_dir, "broker"))


def test_processes_starting_at_once_all_get_the_one_key(tmp_path):
    """Create-exclusive: of many processes making a missing key at once, one writes it
    and every other reads that one; no half-written key is ever read."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_make, args=(tmp_path, queue)) for _ in range(8)]
    for proc in procs:
        proc.start()
    got = {queue.get(timeout=20) for _ in procs}
    for proc in procs:
        proc.join(10)
    assert len(got) == 1
    assert keys.keypair(tmp_path, "broker") in got


def test_a_server_admits_itself_once_and_never_over_another_key(tmp_path):
    public, _ = keys.keypair(tmp_path, "server-2")
    assert keys.admit_self(tmp_path, 2, public) is None
    assert keys.admit_self(tmp_path, 2, public) is None          # again: nothing to do
    other, _ = zmq.curve_keypair()
    problem = keys.admit_self(tmp_path, 2, other)
    assert problem and "holds another key for server-2" in problem and "admit 2" in problem
    assert keys.load_public(keys.allowed_dir(tmp_path) / "server-2.key") == public


def test_admit_replaces_the_key_of_an_id(tmp_path):
    first, _ = zmq.curve_keypair()
    second, _ = zmq.curve_keypair()
    keys.admit(tmp_path, 4, first)
    path = keys.admit(tmp_path, 4, second)
    assert path == keys.allowed_dir(tmp_path) / "server-4.key"
    assert keys.load_public(path) == second


@pytest.mark.parametrize("bad", ["", "x" * 39, "x" * 41, "a" * 39 + "~", "a" * 39 + " b",
                                 "no-such-file.key"])
def test_admit_refuses_anything_but_a_key(tmp_path, bad):
    with pytest.raises(keys.KeyProblem):
        keys.parse_key_argument(bad)


def test_admit_takes_a_key_or_a_key_file(tmp_path):
    public, _ = keys.keypair(tmp_path, "server-5")
    assert keys.parse_key_argument(public.decode()) == public
    assert keys.parse_key_argument(str(keys.key_dir(tmp_path) / "server-5.key")) == public
    assert keys.parse_key_argument(str(keys.key_dir(tmp_path) / "server-5.key_secret")) == public


def test_the_allowlist_is_re_read_when_its_folder_changes(tmp_path):
    one, _ = keys.keypair(tmp_path, "server-1")
    keys.admit_self(tmp_path, 1, one)
    allowlist = keys.Allowlist(tmp_path)
    assert allowlist.refresh() is True
    assert allowlist.id_of(one) == "server-1" and allowlist.key_of("server-1") == one
    assert allowlist.refresh() is False                          # unchanged: not re-read
    two, _ = zmq.curve_keypair()
    keys.admit(tmp_path, 2, two)
    assert allowlist.callback(keys.CLUSTER_DOMAIN, two) is True   # a new key counts at once
    (keys.allowed_dir(tmp_path) / "server-1.key").unlink()
    assert allowlist.refresh() is True
    assert allowlist.id_of(one) is None
    notes = allowlist.take_notes()
    assert notes[0].endswith("read: 1 keys, admitted server-1")
    assert "admitted server-2" in notes[1] and "removed server-1" in notes[2]
    assert allowlist.take_notes() == []


def test_the_zap_policy_ironhouse_for_the_cluster_stonehouse_for_clients(tmp_path):
    member, _ = keys.keypair(tmp_path, "server-3")
    keys.admit_self(tmp_path, 3, member)
    stranger, _ = zmq.curve_keypair()
    allowlist = keys.Allowlist(tmp_path)
    assert allowlist.callback(keys.CLUSTER_DOMAIN, member)
    assert not allowlist.callback(keys.CLUSTER_DOMAIN, stranger)
    assert allowlist.callback(keys.CLIENTS_DOMAIN, stranger)
    assert not allowlist.callback("", member)                    # a socket with no domain
    assert any("not in the allowlist" in n and stranger.decode() in n
               for n in allowlist.take_notes())


def test_the_broker_key_from_the_environment_wins(tmp_path, monkeypatch):
    keys.keypair(tmp_path, "broker")
    remote, _ = zmq.curve_keypair()
    monkeypatch.setenv(keys.BROKER_KEY_ENV, remote.decode())
    assert keys.broker_public_key(tmp_path) == remote
    assert keys.cluster_broker_key(tmp_path) == remote
    monkeypatch.setenv(keys.BROKER_KEY_ENV, "short")
    with pytest.raises(keys.KeyProblem, match="SOCIAL_BROKER_KEY"):
        keys.broker_public_key(tmp_path)


def test_a_client_without_any_broker_key_is_told_where_to_find_one(tmp_path, monkeypatch):
    monkeypatch.delenv(keys.BROKER_KEY_ENV, raising=False)
    with pytest.raises(keys.KeyProblem, match="start the broker"):
        keys.broker_public_key(tmp_path)
    assert not keys.key_dir(tmp_path).exists(), "a client made keys"


@pytest.mark.timeout(30)
def test_user_id_names_the_key_of_each_connection(tmp_path):
    """Over real sockets: an allowlisted key's messages carry its id as User-Id, a
    stranger's CURVE connection and a plain one deliver nothing."""
    ctx = zmq.Context()
    try:
        security = keys.Security(ctx, tmp_path, keys.BROKER)
        router = security.serve(ctx.socket(zmq.ROUTER))
        port = router.bind_to_random_port("tcp://127.0.0.1")
        member_public, member_secret = keys.keypair(tmp_path, "server-7")
        keys.admit_self(tmp_path, 7, member_public)
        senders = []
        for public, secret in (zmq.curve_keypair(), (None, None),
                               (member_public, member_secret)):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            if secret is not None:
                keys.client_socket(sock, public, secret, security.public)
            sock.connect(f"tcp://127.0.0.1:{port}")
            sock.send(b"hello")
            senders.append(sock)
        from common import protocol as P
        assert router.poll(10_000)
        frames, who = P.recv_from(router)
        assert who == "server-7" and frames[-1] == b"hello"
        assert not router.poll(300), "a stranger's or a plain socket's message got through"
        for sock in senders:
            sock.close(0)
        router.close(0)
        security.stop()
    finally:
        ctx.destroy(0)


@pytest.mark.timeout(30)
def test_without_its_zap_handler_a_cluster_socket_lets_no_one_in(tmp_path):
    """libzmq lets every CURVE client in when no ZAP handler answers, unless the
    socket enforces its domain: ours do, so a stopped handler fails closed."""
    from zmq.utils.monitor import recv_monitor_message
    ctx, bare = zmq.Context(), zmq.Context()
    try:
        security = keys.Security(ctx, tmp_path, keys.BROKER)
        member_public, member_secret = keys.keypair(tmp_path, "server-7")
        keys.admit_self(tmp_path, 7, member_public)
        router = security.serve(bare.socket(zmq.ROUTER))   # a context with no ZAP handler
        monitor = router.get_monitor_socket()
        port = router.bind_to_random_port("tcp://127.0.0.1")
        sock = keys.client_socket(ctx.socket(zmq.DEALER), member_public, member_secret,
                                  security.public)
        sock.linger = 0
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send(b"hello")
        events = []
        while not any(e["event"] & (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH) for e in events):
            assert monitor.poll(10_000), f"no handshake failure; events {events}"
            events.append(recv_monitor_message(monitor))
        assert not any(e["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED for e in events)
        assert not router.poll(0), "a message got in without a ZAP handler"
        sock.close(0)
        router.disable_monitor()
        monitor.close(0)
        router.close(0)
        security.stop()
    finally:
        bare.destroy(0)
        ctx.destroy(0)
