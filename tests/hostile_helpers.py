"""What the hostile-input tests (tests/test_hostile.py, tests/test_hostile_sockets.py,
issue 10) share: raw frames written with plain pyzmq and json (not through
``common.protocol``, so the tests outlive a rewrite of its API), a forger's PUB on
the bus, log marks to find the lines a process wrote after a moment, the one health
check every test ends with, and the shared cluster: the ``pool`` and ``shared``
fixtures, which a test module imports to get one 3-server cluster for the module.

The wire format these helpers write is the documented one: frames
``[type, lamport, body]`` (ASCII type, ASCII decimal Lamport stamp, one JSON object),
with ``[route, type, lamport, body]`` on the broker's backend.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
import zmq

from clients.connection import ClientError
from common.processes import wait_until
from tests.bad_input import status_row
from tests.harness import TRUSTED, Cluster

SERVERS = (1, 2, 3)
SANE = 2 ** 53
"""Every Lamport stamp and epoch must stay below this: the largest integer a JSON
reader that uses doubles (JavaScript, many others) still reads exactly."""

ALL_TYPES = ("REQ", "REP", "REQS", "REPS", "READY", "HB", "LEAVE", "EVENT", "ACK", "BEAT", "BYE", "ELECTION",
             "ANSWER", "COORDINATOR", "TIME_QUERY", "TIME_REPLY", "TIME_ADJUST", "FETCH",
             "EVENTS", "COMPARE", "SUMS", "RANGE", "COPIES")
"""Every message type of the protocol (docs/ARCHITECTURE.md)."""
BUS_TYPES = ("EVENT", "BEAT", "BYE", "ELECTION", "ANSWER", "COORDINATOR", "TIME_QUERY",
             "TIME_REPLY", "TIME_ADJUST")

_ctx = zmq.Context()
_ctx.linger = 0


# --- raw frames ----------------------------------------------------------------------------------
def frames(msg_type: str, body: dict, lamport: int | str = 1) -> list[bytes]:
    """``[type, lamport, body]`` as any sender would put them on the wire."""
    return [msg_type.encode("ascii"), str(lamport).encode("ascii"),
            json.dumps(body, ensure_ascii=False).encode("utf-8")]


def request(op: str, user: str | None, args: dict, rid: str | None = None,
            server: int | None = None, token: str | None = None) -> dict:
    """A REQ body as clients send it (with a session token: ``Cluster.login``)."""
    body = {"rid": rid or uuid.uuid4().hex[:16], "op": op, "user": user, "args": args,
            "server": server, "time": time.time()}
    if token is not None:
        body["token"] = token
    return body


def signed_request(cluster: Cluster, op: str, user: str, args: dict, rid: str | None = None,
                   server: int | None = None) -> dict:
    """A REQ body of ``user`` with a valid session token (logged in, registered first
    if need be, through the harness): raw frames that the servers take as the user's."""
    return request(op, user, args, rid, server, cluster.login(user))


def heartbeat(server_id: int, **status) -> dict:
    """An HB body as a server sends it to the broker: its id, its clock, its status row."""
    return {"id": server_id, "clock": time.time(), "status": status_row(server_id, **status)}


def parse(raw: list[bytes]) -> dict:
    """A received ``[type, lamport, body]``: {"type", "lamport", "body"} (plain json)."""
    assert len(raw) == 3, f"a reply of {len(raw)} frames"
    return {"type": raw[0].decode("ascii"), "lamport": int(raw[1]), "body": json.loads(raw[2])}


def socket(kind: int, endpoint: str, **options) -> zmq.Socket:
    """A socket of our own, options set before it connects (HWMs apply to new pipes only)."""
    sock = _ctx.socket(kind)
    sock.linger = 0
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name.upper()), value)
    sock.connect(endpoint)
    return sock


def raw_request(sock: zmq.Socket, message: list[bytes], timeout: float = 5.0) -> dict | None:
    """Send on a DEALER; the parsed reply, or None if none comes within ``timeout``."""
    sock.send_multipart(message)
    if not sock.poll(int(timeout * 1000)):
        return None
    return parse(sock.recv_multipart())


def collect_replies(sock: zmq.Socket, rids: set[str], timeout: float,
                    what: str = "replies") -> dict[str, dict]:
    """Read replies on ``sock`` until every rid in ``rids`` has one: rid -> reply body."""
    got: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while not rids <= set(got):
        left = deadline - time.monotonic()
        if left <= 0:
            missing = len(rids - set(got))
            raise AssertionError(f"{missing} of {len(rids)} {what} missing after {timeout:.0f}s")
        if sock.poll(int(min(left, 0.5) * 1000)):
            while sock.poll(0):
                message = parse(sock.recv_multipart())
                bodies = message["body"]["reps"] if message["type"] == "REPS" \
                    else [message["body"]]             # the fast path's several replies
                for body in bodies:
                    got.setdefault(body.get("rid"), body)
    return got


def call(cluster: Cluster, user: str | None, op: str, args: dict, deadline: float = 10.0) -> dict:
    """One request through the normal client path; a failure is a test failure, with its code."""
    try:
        return cluster.request(user, op, args, deadline=deadline)
    except ClientError as exc:
        pytest.fail(f"{op} by {user}: {exc.code}: {exc}")


# --- logs ----------------------------------------------------------------------------------------
class LogMark:
    """Where each log file ended when the mark was made, to read what came after."""

    def __init__(self, cluster: Cluster, names) -> None:
        self.paths = {name: Path(cluster.config.log_path(name)) for name in names}
        self.offsets = {name: (p.stat().st_size if p.exists() else 0)
                        for name, p in self.paths.items()}

    def new_text(self, name: str) -> str:
        path = self.paths[name]
        if not path.exists():
            return ""
        with open(path, "rb") as f:
            f.seek(self.offsets[name])
            return f.read().decode(errors="replace")

    def new_lines(self) -> list[str]:
        return [line for name in self.paths for line in self.new_text(name).splitlines()]


DROPPED = re.compile(r"dropped", re.IGNORECASE)
REFUSED = re.compile(r"dropped|bad request", re.IGNORECASE)
"""The frontend answers a bad message with a ``bad_request`` reply and logs it so."""


def drop_lines_for(lines: list[str], msg_type: str, verdict: re.Pattern = DROPPED) -> list[str]:
    """The lines that say (``verdict``) a message of ``msg_type``, named as a whole
    word, was dropped."""
    named = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(msg_type)}(?![A-Za-z0-9_])")
    return [line for line in lines if verdict.search(line) and named.search(line)]


# --- the bus, as a forger sees it ----------------------------------------------------------------
class BusForger:
    """A PUB connected to the bus's input (base+2) with a cluster key (``key``, the
    tests' trusted one by default: the bus lets no stranger in, so this is a buggy or
    rogue *member* of the cluster).

    PUB drops what it sends until the XSUB has passed the servers' subscriptions on
    to it, and a server reads one publisher's messages in order: so a probe of an
    unknown type is sent until every server logs it (the bus carries our messages),
    and another after the hostile ones (every server has read them)."""

    def __init__(self, cluster: Cluster, servers=SERVERS, key: str = TRUSTED) -> None:
        self.cluster = cluster
        self.names = [f"server-{i}" for i in servers]
        self.sock = socket(zmq.PUB, cluster.config.endpoint(cluster.config.bus_in_port),
                           **cluster.curve_options(key))
        self.probe(timeout=10.0)

    def send(self, message: list[bytes]) -> None:
        self.sock.send_multipart(message)

    def probe(self, timeout: float = 10.0) -> None:
        """Wait until every server has read everything sent before this call."""
        token = f"PROBE-{uuid.uuid4().hex[:8]}"
        mark = LogMark(self.cluster, self.names)

        def every_server_read_it() -> bool:
            self.sock.send_multipart([token.encode(), b"1", b"{}"])   # idempotent: resend
            if dead_processes(self.cluster):
                return True          # nobody will read it: the health check says who died
            return all(token in mark.new_text(name) for name in self.names)
        wait_until(every_server_read_it, timeout, interval=0.1,
                   what=f"every server to log the bus probe {token} (an unknown type)")

    def close(self) -> None:
        self.sock.close(0)


# --- the cluster's health ------------------------------------------------------------------------
def rows(status: dict | None) -> dict[int, dict]:
    return {row["id"]: row for row in (status or {}).get("servers", [])}


def serving_ids(status: dict | None) -> set[int]:
    return {i for i, row in rows(status).items()
            if row.get("alive") and row.get("phase") == "serving"}


def insane_stamps(status: dict) -> list[str]:
    """Every Lamport stamp and epoch in ``status`` at or above SANE (or not a number)."""
    bad = []
    for i, row in rows(status).items():
        if not row.get("alive"):
            continue
        for name in ("lamport", "epoch"):
            value = row.get(name)
            if value is not None and not (isinstance(value, int) and 0 <= value < SANE):
                bad.append(f"server {i} {name}={value!r}")
    for name, value in (("epoch", status.get("epoch")),
                        ("broker lamport", (status.get("broker") or {}).get("lamport"))):
        if value is not None and not (isinstance(value, int) and 0 <= value < SANE):
            bad.append(f"{name}={value!r}")
    return bad


def answering_status(cluster: Cluster, timeout: float = 5.0) -> dict:
    return wait_until(lambda: cluster.status(deadline=1.0), timeout, interval=0.1,
                      what="the broker to answer status")


def dead_processes(cluster: Cluster) -> list[str]:
    return [name for name in cluster.names() if not cluster.alive(name)]


def assert_none_died(cluster: Cluster) -> None:
    """Every process alive; else which died, with the last line of its stderr (the
    exception of its traceback)."""
    dead = dead_processes(cluster)
    why = {}
    for name in dead:
        err = Path(cluster.config.log_dir) / f"{name}.err"
        lines = err.read_text(errors="replace").strip().splitlines() if err.exists() else []
        why[name] = lines[-1] if lines else "no stderr"
    assert not dead, f"processes died: {why}"


def _wait(cluster: Cluster, condition, timeout: float, what: str):
    """wait_until, failing at once (and saying who) when a process dies meanwhile."""
    def alive_and(condition=condition):
        assert_none_died(cluster)
        return condition()
    return wait_until(alive_and, timeout, interval=0.1, what=what)


def _converged(cluster: Cluster) -> dict[int, dict]:
    try:
        return cluster.wait_converged(timeout=10.0)
    except TimeoutError:
        assert_none_died(cluster)
        raise


def assert_cluster_healthy(cluster: Cluster, before_digest: str | None = None,
                           servers=SERVERS, user: str = "checker") -> str:
    """After a hostile input: every process alive, every server serving, stamps sane,
    equal digests (equal to ``before_digest`` when the test wrote nothing itself),
    and ``post``, ``feed`` and ``status`` still work. Returns the digest after our post."""
    assert_none_died(cluster)
    status = _wait(cluster, lambda: cluster.status(deadline=1.0), 5.0, "status to answer")
    _wait(cluster, lambda: set(servers) <= serving_ids(cluster.status(deadline=1.0)), 10.0,
          f"servers {list(servers)} serving")
    assert not insane_stamps(status), insane_stamps(status)
    live = _converged(cluster)
    assert set(live) == set(servers), f"live servers {sorted(live)}"
    digests = {row["digest"] for row in live.values()}
    assert len(digests) == 1, f"digests differ: {digests}"
    if before_digest is not None:
        assert digests == {before_digest}, "the hostile input changed the servers' events"

    post = call(cluster, user, "post", {"text": "still standing"})["post"]
    feed = call(cluster, user, "feed", {"limit": 5})
    assert post["id"] in [p["id"] for p in feed["posts"]], "our post is not in the feed"
    after = _converged(cluster)
    assert len({row["digest"] for row in after.values()}) == 1
    status = answering_status(cluster)
    assert not insane_stamps(status), insane_stamps(status)
    assert_none_died(cluster)
    return next(iter(after.values()))["digest"]


def looks_healthy(cluster: Cluster, servers=SERVERS) -> str | None:
    """Why a shared cluster should not be handed to the next test, or None if it can be."""
    dead = dead_processes(cluster)
    if dead:
        return f"processes died: {dead}"
    status = cluster.status(deadline=2.0)
    if status is None:
        return "status does not answer"
    if not set(servers) <= serving_ids(status):
        return f"serving: {sorted(serving_ids(status))}"
    if insane_stamps(status):
        return f"insane stamps: {insane_stamps(status)}"
    if status.get("coordinator") != max(servers):
        return f"coordinator {status.get('coordinator')}"
    return None


def converged_digest(cluster: Cluster) -> str:
    """The one digest every live server has (waits until they agree)."""
    return next(iter(cluster.wait_converged(timeout=10.0).values()))["digest"]


def broker_requests(cluster: Cluster) -> int:
    """The broker's count of the requests it accepted (``status``)."""
    return answering_status(cluster)["broker"]["requests"]


def vm_kb(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of ``pid`` from /proc/<pid>/status, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


# --- the shared cluster --------------------------------------------------------------------------
class SharedCluster:
    """One cluster for the module, rebuilt when a test failed or left it unhealthy."""

    def __init__(self, tmp_path_factory) -> None:
        self.factory = tmp_path_factory
        self.cluster: Cluster | None = None
        self.builds = 0

    def get(self) -> Cluster:
        why = "first use" if self.cluster is None else looks_healthy(self.cluster)
        if why is not None:
            self.discard(why)
            self.builds += 1
            self.cluster = Cluster(self.factory.mktemp(f"hostile-{self.builds}"))
            self.cluster.start(3)
            self.cluster.wait_serving(SERVERS, timeout=20)
            wait_until(lambda: looks_healthy(self.cluster) is None, 15, interval=0.1,
                       what="the new shared cluster to settle (server 3 coordinator)")
        return self.cluster

    def discard(self, why: str) -> None:
        if self.cluster is not None:
            print(f"shared cluster {self.builds} replaced: {why}")
            self.cluster.stop()
            self.cluster = None


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    shared = SharedCluster(tmp_path_factory)
    yield shared
    shared.discard("end of module")


@pytest.fixture
def shared(pool, request) -> Cluster:
    """The shared cluster, healthy; on failure its logs are printed and it is replaced."""
    cluster = pool.get()
    yield cluster
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(cluster.log_tails())
        pool.discard(f"{request.node.name} failed")


def post_many(cluster: Cluster, user: str, texts) -> list[dict]:
    """Posts through one Lazy Pirate connection, as a user would make them."""
    conn = cluster.connection(user, deadline=10.0)
    try:
        return [conn.request("post", {"text": text})["post"] for text in texts]
    finally:
        conn.close()


def coordinator_settled(cluster: Cluster, expected: int, stopped=()) -> bool:
    """``status`` and every live row name ``expected`` coordinator at a sane epoch
    (or a process died that the test did not stop: the health check says which)."""
    if set(dead_processes(cluster)) - {f"server-{i}" for i in stopped}:
        return True
    status = cluster.status(deadline=1.0)
    if status is None or status.get("coordinator") != expected or insane_stamps(status):
        return False
    return all(row.get("coordinator") == expected for row in rows(status).values()
               if row.get("alive"))
