"""What the bad-input tests share: the cluster's ids, a valid request body and a
valid server heartbeat to spoil, and the check that bad input changed nothing."""
from __future__ import annotations

from common import protocol as P
from tests.harness import Cluster

SERVERS = (1, 2, 3)
VALID_POST = {"rid": "r-0001", "op": "post", "user": "alice", "args": {"text": "hi"},
              "server": None, "time": 1.0}
MISSING = object()
"""Marks a field to leave out of a body."""
REQ, ONE = P.REQUEST.encode(), b"1"


def body(**changes) -> bytes:
    """VALID_POST with ``changes`` (MISSING removes a field), encoded."""
    fields = {**VALID_POST, **changes}
    return P.dumps({k: v for k, v in fields.items() if v is not MISSING})


def status_row(server_id: int, **changes) -> dict:
    """A server's status row, as its HB to the broker carries it, with ``changes``."""
    row = {"id": server_id, "phase": "serving", "events": 0, "digest": "", "lamport": 1,
           "vv": {}, "coordinator": None, "epoch": 0, "clock_offset_ms": None,
           "clock_skew_ms": 0.0, "last_sync": None, "under_replicated": 0,
           "repl_lag_hist": [], "peers": []}
    return {**row, **changes}


def heartbeat(server_id: int, **changes) -> dict:
    """A server's HB body to the broker (its id, clock and status row), the row with ``changes``."""
    return {"id": server_id, "clock": 1.0, "status": status_row(server_id, **changes)}


def assert_unchanged(cluster: Cluster, before: str) -> None:
    live = cluster.wait_converged()
    assert {s["digest"] for s in live.values()} == {before}, "bad input changed the state"
    assert set(live) == set(SERVERS)


def digest(cluster: Cluster) -> str:
    return next(iter(cluster.wait_converged().values()))["digest"]
