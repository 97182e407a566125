"""A sequence number is never issued twice (issue 11, row 1): a server that lost its
folder does not serve, and does not number new writes, until a peer gave it back
its own events."""
from __future__ import annotations

import shutil

import pytest

from clients.connection import ClientError
from common import protocol as P
from common.processes import wait_until
from servers.issued import IssuedSeq
from tests.harness import Cluster

pytestmark = pytest.mark.timeout(180)


def test_the_highest_issued_seq_survives_and_a_damaged_file_is_refused(tmp_path):
    issued = IssuedSeq(tmp_path / "server-1.issued")
    assert issued.highest == 0
    issued.record(7)
    issued.record(3)                                  # never goes down
    assert IssuedSeq(tmp_path / "server-1.issued").highest == 7
    (tmp_path / "server-1.issued").write_text("7x")
    with pytest.raises(ValueError, match="damaged"):
        IssuedSeq(tmp_path / "server-1.issued")


def _post(c: Cluster, text: str, server: int | None = None, deadline: float = 10.0) -> dict:
    return c.request("ann", P.OP_POST, {"text": text}, server=server, deadline=deadline)["post"]


def _ids_on(c: Cluster, server: int) -> set[str]:
    return {p["id"] for p in c.request("ann", P.OP_FEED, {"limit": 1000}, server=server)["posts"]}


def test_a_server_whose_folder_was_deleted_waits_for_its_own_events_before_serving(running):
    c = running
    c.request("ann", P.OP_REGISTER, {})
    before = [_post(c, f"before {i}", server=3)["id"] for i in range(20)]   # server 3's origin
    issued = c.wait_converged(timeout=15)[3]["vv"]["3"]     # 20, or 21 if it took the register
    for name in ("server-1", "server-2", "server-3"):
        assert c.terminate(name) == 0
    shutil.rmtree(c.config.server_data_dir(3))

    c.start_server(3)                                  # alone, with an empty folder
    wait_until(lambda: "waiting for a peer that holds them" in c.log_since_start("server-3"),
               timeout=15, what="server 3 to say it waits for its own events")
    row = wait_until(lambda: c.servers().get(3, {}).get("waiting") and c.servers()[3],
                     timeout=10, what="status to say why server 3 waits")
    assert row["phase"] == "syncing" and f"issued up to {issued}:" in row["waiting"]
    with pytest.raises(ClientError) as refused:        # it does not serve, nor number writes
        _post(c, "while alone", deadline=2.0)
    assert refused.value.code == P.ERR_UNAVAILABLE

    c.start_server(1)
    c.start_server(2)
    c.wait_serving({1, 2, 3}, timeout=30)
    after = [_post(c, f"after {i}", server=3)["id"] for i in range(20)]
    live = c.wait_converged(timeout=20)
    assert len({s["digest"] for s in live.values()}) == 1
    for server in (1, 2, 3):
        assert set(before + after) <= _ids_on(c, server)
    assert live[3]["vv"]["3"] == issued + 20           # numbered on from there: none twice
