"""Issue 13, the interface: every process on an address of its own.

The broker binds and is reached on 127.0.0.2 and each server binds and
advertises 127.0.0.1N: Linux routes all of 127.0.0.0/8 to ``lo``, so no setup
is needed, yet any code that binds or dials the broker's host for a peer (the
same-host assumption of before) fails here. Skipped, with the reason, where
127.0.0.2 cannot be bound. Plus the unit tests of the endpoint type and of the
bind/advertise defaults.
"""
from __future__ import annotations

import socket
import subprocess
import sys

import msgspec
import pytest

from common import protocol as P
from common.config import ConfigError, load_config
from common.processes import ROOT, cluster_env, wait_until
from tests.harness import Cluster

BROKER_HOST = "127.0.0.2"
SERVER_HOSTS = {1: "127.0.0.11", 2: "127.0.0.12", 3: "127.0.0.13"}


def _can_bind(host: str) -> str | None:
    """None if ``host`` can be bound here, else why not."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError as exc:
            return f"cannot bind {host} ({exc.strerror}): 127.0.0.0/8 is not all on lo here"
    return None


@pytest.fixture
def hosts(make_cluster) -> Cluster:
    """Broker on 127.0.0.2, servers 1..3 on 127.0.0.11..13, all serving."""
    for host in [BROKER_HOST, *SERVER_HOSTS.values()]:
        why = _can_bind(host)
        if why:
            pytest.skip(why)
    c = make_cluster("hosts", {"SOCIAL_HOST": BROKER_HOST},
                     broker_args=["--bind", BROKER_HOST],
                     server_args={i: ["--bind", h, "--advertise", h]
                                  for i, h in SERVER_HOSTS.items()})
    c.start(3)
    c.wait_serving({1, 2, 3})
    return c


def peer_endpoint(c: Cluster, server_id: int) -> str:
    return f"tcp://{SERVER_HOSTS[server_id]}:{c.config.peer_port(server_id)}"


def feeds(c: Cluster, user: str) -> dict[int, list[str]]:
    """``user``'s feed as each server answers it (``--server ID``), post ids in order."""
    return {i: [p["id"] for p in c.cli(user, "feed", "--limit", "1000", "--server", str(i))["posts"]]
            for i in SERVER_HOSTS}


@pytest.mark.timeout(120)
def test_a_cluster_on_distinct_addresses_serves_replicates_and_rejoins(hosts: Cluster):
    c = hosts
    # status: each server's advertised address, in --json and in the table
    rows = wait_until(lambda: (r := c.servers()) and
                      all(r.get(i, {}).get("address") for i in SERVER_HOSTS) and r,
                      10, what="every server's address in status")
    assert {i: rows[i]["address"] for i in SERVER_HOSTS} == \
        {i: peer_endpoint(c, i) for i in SERVER_HOSTS}
    table = c.cli(None, "status", "--wide", json=False)       # every column
    assert "address" in table.splitlines()[0]
    for i in SERVER_HOSTS:
        assert peer_endpoint(c, i) in table

    # each server's peers dial what it announced: no link to the broker's host
    for i in SERVER_HOSTS:
        log = c.log_text(f"server-{i}")
        for j in set(SERVER_HOSTS) - {i}:
            assert f"announces {peer_endpoint(c, j)}" in log, f"server-{i} never heard server-{j}"

    # writes through each server, acked by all three
    for user in ("alice", "bob"):
        c.request(user, P.OP_REGISTER, {})
    assert c.cli("bob", "follow", "alice")["replicas"] == 3
    for i in SERVER_HOSTS:
        for k in range(3):
            post = c.request("alice", P.OP_POST, {"text": f"from server {i}, post {k}"}, server=i)
            assert post["replicas"] == 3, post
    agreed = feeds(c, "bob")
    assert len(agreed[1]) == 9 and agreed[1] == agreed[2] == agreed[3]

    # a server killed and restarted (on its address) rejoins and catches up
    c.kill("server-2")
    wait_until(lambda: 2 not in c.serving(), 10, what="server-2 out of the pool")
    for k in range(5):
        c.request("alice", P.OP_POST, {"text": f"while server 2 is down, {k}"}, server=1)
    c.start_server(2)
    c.wait_serving({1, 2, 3}, timeout=20)
    c.wait_converged(timeout=15)
    after = feeds(c, "bob")
    assert len(after[2]) == 14 and after[1] == after[2] == after[3]
    assert c.request("alice", P.OP_POST, {"text": "all three again"}, server=2)["replicas"] == 3
    rows = c.wait_converged(timeout=15)
    assert set(rows) == set(SERVER_HOSTS)


# --- unit: the endpoint type, the defaults ---------------------------------------------
@pytest.mark.timeout(10)
@pytest.mark.parametrize("endpoint", ["tcp://10.0.0.12:5656", "tcp://127.0.0.11:1",
                                      "tcp://node-3.example.org:65535", "tcp://[fe80::1]:5656"])
def test_an_endpoint_is_tcp_a_host_and_a_port(endpoint):
    assert msgspec.convert(endpoint, P.PeerEndpoint) == endpoint


@pytest.mark.timeout(10)
@pytest.mark.parametrize("endpoint", [
    "tcp://0.0.0.0:5656", "tcp://*:5656", "tcp://[::]:5656",          # wildcards: dial nothing
    "tcp://10.0.0.12:0", "tcp://10.0.0.12:65536", "tcp://10.0.0.12:05656",
    "tcp://10.0.0.12", "tcp://:5656", "ipc:///tmp/peer", "inproc://x", "udp://10.0.0.12:5656",
    "tcp://10.0.0.12:5656/x", "tcp://a b:5656", "tcp://-a:5656", "tcp://a\n:5656",
    "tcp://" + "a" * 300 + ":5656", "tcp://" + ".".join(["a" * 63] * 5) + ":1",
])
def test_an_announced_endpoint_that_is_not_one_is_refused(endpoint):
    beat = {"from": 2, "phase": "serving", "vv": {}, "epoch": 0, "coordinator": None,
            "address": endpoint}
    with pytest.raises(P.ProtocolError, match="address"):
        P.decode([b"BEAT", b"1", P.dumps(beat)], P.BUS)
    ready = {"id": 2, "address": endpoint}
    with pytest.raises(P.ProtocolError, match="address"):
        P.decode([b"", b"", b"READY", b"1", P.dumps(ready)], P.SERVER_TO_BROKER)


@pytest.mark.timeout(10)
def test_bind_defaults_to_the_host_and_advertise_to_the_bind():
    config = load_config(host="10.0.0.1", port_base=6000)
    assert config.endpoint(6000) == "tcp://10.0.0.1:6000"
    assert config.bind_endpoint(6000) == "tcp://10.0.0.1:6000"
    assert config.peer_endpoint(3) == "tcp://10.0.0.1:6103"

    bound = load_config(host="10.0.0.1", bind="10.0.0.12", port_base=6000)
    assert bound.endpoint(6000) == "tcp://10.0.0.1:6000"            # the broker, still
    assert bound.bind_endpoint(6103) == "tcp://10.0.0.12:6103"
    assert bound.peer_endpoint(3) == "tcp://10.0.0.12:6103"
    assert bound.fallback_peer_endpoint(3) == "tcp://10.0.0.1:6103"

    wild = load_config(host="10.0.0.1", bind="0.0.0.0", advertise="node-3", port_base=6000)
    assert wild.bind_endpoint(6103) == "tcp://*:6103"
    assert wild.peer_endpoint(3) == "tcp://node-3:6103"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("bind", ["0.0.0.0", "*", "::"])
def test_a_wildcard_bind_without_advertise_is_refused(bind):
    config = load_config(host="10.0.0.1", bind=bind)
    with pytest.raises(ConfigError, match="--advertise"):
        config.peer_endpoint(1)
    with pytest.raises(ConfigError, match="wildcard"):
        load_config(bind=bind, advertise="0.0.0.0").peer_endpoint(1)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("field, value", [("host", "0.0.0.0"), ("host", "a b"),
                                          ("bind", "tcp://x"), ("advertise", "x:5656"),
                                          ("advertise", "a" * 300)])
def test_an_address_that_is_no_host_is_refused(field, value):
    with pytest.raises(ConfigError):
        load_config(**{field: value})


@pytest.mark.timeout(30)
def test_a_server_binding_a_wildcard_without_advertise_says_so_in_one_line(tmp_path):
    config = load_config(data_dir=str(tmp_path / "data"), log_dir=str(tmp_path / "logs"))
    done = subprocess.run([sys.executable, "-m", "servers", "--id", "1", "--bind", "0.0.0.0"],
                          cwd=ROOT, env=cluster_env(config), capture_output=True, text=True,
                          timeout=25)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--advertise" in lines[0], \
        done.stderr
