"""Anti-entropy with real processes (issue 11, row 8): a forged event on the bus, and
a record edited on disk with a valid checksum, are outvoted: every acknowledged
post ends on every server, digests agree, and the repair is logged and counted."""
from __future__ import annotations

import time
import uuid

import msgspec
import pytest

from common.processes import wait_until
from servers import records
from tests.hostile_helpers import BusForger, call, frames

SERVERS = (1, 2, 3)


def vv_of(cluster, server_id: int, origin: int) -> int:
    row = cluster.servers().get(server_id) or {}
    return int((row.get("vv") or {}).get(str(origin), 0))


def post_until_origin_reaches(cluster, origin: int, seq: int, user: str) -> list[str]:
    """Post (each acked) until server ``origin`` has numbered ``seq``; the ids acked."""
    acked = []
    deadline = time.monotonic() + 30
    while vv_of(cluster, origin, origin) < seq:
        assert time.monotonic() < deadline, f"server-{origin} never reached seq {seq}"
        acked.append(call(cluster, user, "post", {"text": f"post {len(acked)}"})["post"]["id"])
    return acked


def assert_everywhere(cluster, ids: list[str]) -> None:
    """Every id in ``ids`` is in the feed each server gives, asked one by one."""
    for server_id in SERVERS:
        feed = cluster.request("checker", "feed", {"limit": 1000}, server=server_id)
        held = {p["id"] for p in feed["posts"]}
        missing = [i for i in ids if i not in held]
        assert not missing, f"server-{server_id} lacks acked posts {missing}"


def wait_one_digest(cluster) -> dict[int, dict]:
    def same():
        rows = {i: r for i, r in cluster.servers().items() if r["alive"]}
        digests = {r["digest"] for r in rows.values()}
        return rows if set(rows) == set(SERVERS) and len(digests) == 1 else None
    return wait_until(same, 20, interval=0.1, what="one digest on every server")


def forge_after_some_posts(c, ahead: int, sender: int) -> tuple[list[str], int, dict]:
    """Start 3 servers, post, then forge on the bus, as if sent by ``sender``, a post
    numbered ``ahead`` past server 1's last event. (acked ids, its seq, the forgery)"""
    c.start(3)
    c.wait_serving(SERVERS, timeout=20)
    acked = post_until_origin_reaches(c, 1, 1, "alice")
    c.wait_converged()
    seq = vv_of(c, 1, 1) + ahead
    forged = {"id": f"forged{uuid.uuid4().hex[:8]}", "kind": "post", "user": "mallory",
              "lamport": 1, "ts": time.time(), "origin": 1, "seq": seq,
              "data": {"text": "forged in server 1's name"}}
    forger = BusForger(c)
    try:
        forger.send(frames("EVENT", {"from": sender, "events": [forged], "vv": {"1": seq}}))
        forger.probe()
    finally:
        forger.close()
    return acked, seq, forged


@pytest.mark.timeout(120)
def test_a_forged_event_ahead_of_its_origin_is_replaced_and_every_acked_post_is_everywhere(
        cluster):
    """The issue's row 8: a forged event (origin 1, seq+2) parked behind a gap took
    the place of server 1's real event on servers 2 and 3, for good."""
    c = cluster
    acked, ahead, forged = forge_after_some_posts(c, ahead=2, sender=1)
    acked += post_until_origin_reaches(c, 1, ahead + 1, "alice")
    rows = wait_one_digest(c)
    assert_everywhere(c, acked)
    for server_id in SERVERS:
        feed = c.request("checker", "feed", {"limit": 1000}, server=server_id)
        assert forged["id"] not in {p["id"] for p in feed["posts"]}, \
            f"server-{server_id} still serves the forged post"
    repaired = {i: rows[i]["repairs"] for i in SERVERS}
    assert repaired[1] == 0, "the origin replaced its own event"
    assert repaired[2] >= 1 and repaired[3] >= 1, f"repairs in status: {repaired}"
    for name in ("server-2", "server-3"):
        log = c.log_text(name)
        assert f"repaired event 1:{ahead}: kept the copy of server-1" in log, name
    assert "not counted as holding them" in c.log_text("server-1")
    assert all(c.alive(f"server-{i}") for i in SERVERS)


@pytest.mark.timeout(120)
def test_an_event_forged_in_its_origins_name_is_refused_by_the_origin(cluster):
    """Sent as if by server 2, an event numbered as server 1's next one reaches
    server 1 too: while it serves, it alone numbers its events."""
    c = cluster
    acked, nxt, _ = forge_after_some_posts(c, ahead=1, sender=2)
    assert f"refused event 1:{nxt}" in c.log_text("server-1")
    acked += post_until_origin_reaches(c, 1, nxt, "alice")
    rows = wait_one_digest(c)
    assert_everywhere(c, acked)
    assert rows[3]["repairs"] >= 1, "server 3 kept the forged copy"
    assert "mallory" not in call(c, "alice", "users", {})["users"]


def edit_in_log(folder, origin: int, seq: int, text: str) -> str:
    """Change the text of event ``origin:seq`` in a log segment of ``folder``, with
    its checksum recomputed (a copy that is wrong yet well formed); its old text."""
    for segment in sorted(folder.glob("wal-*.jsonl")):
        lines = segment.read_bytes().splitlines(keepends=True)
        for i, line in enumerate(lines):
            event, _ = records.read_line(line.rstrip(b"\n"))
            if (event.origin, event.seq) == (origin, seq):
                edited = msgspec.structs.replace(
                    event, data=msgspec.structs.replace(event.data, text=text))
                lines[i] = records.wal_line(edited)
                segment.write_bytes(b"".join(lines))
                return event.data.text
    raise AssertionError(f"event {origin}:{seq} is in no log segment of {folder}")


@pytest.mark.timeout(120)
def test_a_record_edited_with_a_valid_checksum_is_repaired_from_the_peers(cluster):
    """Checksums cannot catch it: the fingerprints in BEAT do, at equal vectors."""
    c = cluster
    c.start(3)
    c.wait_serving(SERVERS, timeout=20)
    acked = post_until_origin_reaches(c, 1, 2, "alice")
    c.wait_converged()
    assert c.terminate("server-3") == 0
    original = edit_in_log(c.config.server_data_dir(3), 1, 2, "edited, checksum and all")
    c.start_server(3)
    c.wait_serving(SERVERS, timeout=20)
    rows = wait_one_digest(c)
    assert_everywhere(c, acked)
    assert rows[3]["repairs"] == 1 and rows[1]["repairs"] == rows[2]["repairs"] == 0
    log = c.log_since_start("server-3")
    assert "repair of server-1's events" in log and "repaired event 1:2" in log, log[-3000:]
    feed = c.request("checker", "feed", {"limit": 1000}, server=3)
    texts = {p["text"] for p in feed["posts"]}
    assert original in texts and "edited, checksum and all" not in texts
