"""Issue 11, row 3, as an operator meets it: ten bytes overwritten in the middle of
a log record so that it still parses. Before checksums the checkpointer folded it
into db.json and every later start died with ``KeyError: 'user'``: a crash loop."""
from __future__ import annotations

import pytest

from common.processes import wait_until
from servers.store import read_folder

SERVERS = {1, 2, 3}


def overwrite_inside_a_post(folder, rid: str) -> None:
    """Ten bytes of the post's text replaced by ten others, in place: still JSON."""
    for segment in sorted(folder.glob("wal-*.jsonl")):
        raw = bytearray(segment.read_bytes())
        at = raw.find(rid.encode())
        if at < 0:
            continue
        text = raw.find(b'"text":"', at) + len(b'"text":"')
        raw[text:text + 10] = b"XXXXXXXXXX"
        segment.write_bytes(bytes(raw))
        return
    raise AssertionError(f"post {rid} is in no log segment of {folder}")


@pytest.mark.timeout(120)
def test_a_log_record_altered_in_place_is_set_aside_pulled_again_and_never_served(
        make_cluster):
    cluster = make_cluster().start(3)
    cluster.wait_serving(SERVERS)
    posted = [cluster.cli("alice", "post", f"post number {n} of row three")["post"]["id"]
              for n in range(5)]
    cluster.wait_converged()
    assert cluster.terminate("server-3") == 0
    folder = cluster.config.server_data_dir(3)
    overwrite_inside_a_post(folder, posted[2])

    proc = cluster.start_server(3)
    cluster.wait_serving(SERVERS)
    log = cluster.log_since_start("server-3")
    assert log.count("checksum mismatch") == 1, log
    assert f"stored record set aside in {folder / 'rejected.jsonl'}" in log
    rows = cluster.wait_converged()
    assert len({row["digest"] for row in rows.values()}) == 1
    for server in ("1", "2", "3"):
        feed = cluster.cli("bob", "feed", "--server", server)["posts"]
        assert sorted((p["id"], p["text"]) for p in feed) == sorted(
            (rid, f"post number {n} of row three") for n, rid in enumerate(posted)), server
    assert proc.poll() is None and log.count("| started:") == 1, "server 3 restarted itself"

    def refolded_clean() -> bool:       # the start's fold left the bad record out
        bad: list = []
        read_folder(folder, lambda where, raw: bad.append(where))
        return not bad
    wait_until(refolded_clean, timeout=10, what="server 3's folder without the bad record")
    assert cluster.terminate("server-3") == 0
    cluster.start_server(3)
    cluster.wait_serving(SERVERS)
    assert "checksum mismatch" not in cluster.log_since_start("server-3")
