"""A server's store: the write-ahead log, and the checkpointer process folding it
into TinyDB (real child processes, real files, real signals)."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from common import protocol as P
from common.ownership import InUse, pid_alive
from common.processes import wait_until
from servers.records import wal_line
from servers.store import REJECTED, DiskError, EventStore, read_folder

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent


QUIET_S = 0.25
"""The store's quiet_s (Config.checkpoint_quiet_s) in these tests."""


def _events(first: int, count: int) -> list[P.Event]:
    return [P.Event(id=f"e{n}", kind="post", user="alice", lamport=n, ts=float(n), origin=1,
                    seq=n, data=P.EventData(text=f"post {n}")) for n in range(first, first + count)]


def _write(store: EventStore, events: list[P.Event]) -> None:
    for event in events:
        store.append(event)
    store.sync()


def _ids(first: int, last: int) -> list[str]:
    """The ids of events ``first..last``, in seq order."""
    return [f"e{n}" for n in range(first, last + 1)]


def _tinydb_ids(folder: Path) -> list[str]:
    raw = (folder / "db.json").read_text() if (folder / "db.json").exists() else "{}"
    docs = json.loads(raw).get("events", {}).values()
    return [doc["id"] for doc in sorted(docs, key=lambda doc: doc["seq"])]   # seq order




def test_a_checkpoint_folds_the_log_into_tinydb_and_a_reload_sees_each_event_once(tmp_path):
    store = EventStore(tmp_path, checkpoint_min=10)
    assert store.load() == []
    _write(store, _events(1, 12))
    assert store.maybe_checkpoint(quiet_for=1.0)         # 12 >= 10: the segment is handed over
    _write(store, _events(13, 3))                        # a new segment, not yet due
    assert not store.maybe_checkpoint(quiet_for=1.0)
    done = wait_until(store.finished, timeout=10, what="the checkpoint")
    assert done[0][0] == 12
    assert _tinydb_ids(tmp_path) == _ids(1, 12)
    assert [p.name for p in tmp_path.glob("wal-*.jsonl")] == ["wal-000002.jsonl"]
    store.close()

    again = EventStore(tmp_path, checkpoint_min=10)
    try:
        assert [e.id for e in again.load()] == _ids(1, 15)
        # what the log still held is folded at start-up, and only that
        wait_until(lambda: _tinydb_ids(tmp_path) == _ids(1, 15),
                   timeout=10, what="the start-up fold")
    finally:
        again.close()


def test_a_due_checkpoint_waits_for_a_quiet_moment_unless_long_overdue(tmp_path):
    store = EventStore(tmp_path, checkpoint_min=10, quiet_s=QUIET_S)
    store.load()
    try:
        _write(store, _events(1, 12))                    # due (10), but writes keep coming
        assert not store.maybe_checkpoint(quiet_for=0.0)
        assert store.maybe_checkpoint(quiet_for=QUIET_S)  # a quiet moment: fold
        _write(store, _events(13, 39))                   # under 4 x due (40): still waits
        assert not store.maybe_checkpoint(quiet_for=0.0)
        _write(store, _events(52, 1))                    # 40: overdue, folded even under load
        assert store.maybe_checkpoint(quiet_for=0.0)
        _write(store, _events(53, 2))                    # not due: only a long idle folds it
        assert not store.maybe_checkpoint(quiet_for=1.0, idle_s=5.0)
        assert store.maybe_checkpoint(quiet_for=5.0, idle_s=5.0)
        wait_until(lambda: _tinydb_ids(tmp_path) == _ids(1, 54),
                   timeout=10, what="all three folds")
    finally:
        store.close()


def test_the_store_keeps_working_when_its_checkpointer_is_killed(tmp_path):
    store = EventStore(tmp_path, checkpoint_min=5)
    store.load()
    child = store._checkpointer.pid
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: not pid_alive(child), timeout=5, what="the checkpointer to die")
    _write(store, _events(1, 6))
    assert store.maybe_checkpoint()                      # handed to nobody: stays on disk
    _write(store, _events(7, 2))
    assert store.finished() == []
    assert store.lost is not None and "next start" in store.lost    # for the server's log
    store.close()
    assert _tinydb_ids(tmp_path) == []
    again = EventStore(tmp_path, checkpoint_min=5)
    try:
        assert [e.id for e in again.load()] == _ids(1, 8)
    finally:
        again.close()


def test_the_checkpointer_dies_with_its_server(tmp_path):
    """SIGKILL of the process that owns the store takes its checkpointer with it."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from servers.store import EventStore
        store = EventStore(sys.argv[1])
        store.load()
        print(store._checkpointer.pid, flush=True)
        sys.stdin.read()                      # until killed
    """)
    owner = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        child = int(owner.stdout.readline())
        assert pid_alive(child)
        owner.kill()
        owner.wait(5)
        wait_until(lambda: not pid_alive(child), timeout=5, what="the checkpointer to follow")
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(5)


def test_invalid_stored_records_are_set_aside_by_name_and_the_rest_loads(tmp_path):
    """A record that does not validate, in the log or in TinyDB, is set aside with
    the file and record named; a torn last line (a kill mid-write) is skipped quietly."""
    good = [P.dumps(e) for e in _events(1, 3)]
    forged = P.dumps(_events(4, 1)[0]).replace(b'"lamport":4', b'"lamport":10000000000000000')
    (tmp_path / "wal-000001.jsonl").write_bytes(
        good[0] + b"\n" + forged + b"\n" + b'{"id": "x", "kind": "nope"}\n' + good[1] + b"\n"
        + good[2] + b"\n" + good[2][:20])
    db = {"events": {"1": P.to_builtins(_events(9, 1)[0]),
                     "2": {**P.to_builtins(_events(10, 1)[0]), "user": "Not A Name"}}}
    (tmp_path / "db.json").write_text(json.dumps(db))
    store = EventStore(tmp_path)
    try:
        loaded = store.load()
        assert sorted(e.id for e in loaded) == ["e1", "e2", "e3", "e9"]
        assert len(store.rejected) == 3, store.rejected
        assert any("wal-000001.jsonl line 2" in r for r in store.rejected)
        assert any("wal-000001.jsonl line 3" in r for r in store.rejected)
        assert any("db.json document 2" in r for r in store.rejected)
        kept = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
        assert [k["record"] for k in kept] == store.rejected
        assert "10000000000000000" in kept[1]["raw"] or "10000000000000000" in kept[2]["raw"]
    finally:
        store.close()


def test_a_second_store_on_a_folder_in_use_is_refused_and_changes_nothing(tmp_path):
    store = EventStore(tmp_path)
    store.load()
    _write(store, _events(1, 3))
    files = sorted((p.name, p.stat().st_size) for p in tmp_path.iterdir())
    try:
        with pytest.raises(InUse, match=rf"^{tmp_path} is in use by another process "
                                        rf"\(pid {os.getpid()}\)$"):
            EventStore(tmp_path)
        assert sorted((p.name, p.stat().st_size) for p in tmp_path.iterdir()) == files
    finally:
        store.close()
    again = EventStore(tmp_path)                         # closed: the folder is free
    try:
        assert [e.id for e in again.load()] == _ids(1, 3)
    finally:
        again.close()


def _rejected(folder: Path) -> list[dict]:
    path = folder / "rejected.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_log_record_altered_so_that_it_still_parses_is_set_aside_by_its_checksum(tmp_path):
    store = EventStore(tmp_path)
    store.load()
    _write(store, _events(1, 5))
    store.close()
    wal = tmp_path / "wal-000001.jsonl"
    lines = wal.read_bytes().split(b"\n")
    assert lines[1].count(b'"text":"post 2"') == 1 and b'"sum":"' in lines[1]
    lines[1] = lines[1].replace(b'"text":"post 2"', b'"text":"post 7"')   # one character
    lines[3] = lines[3].replace(b'"user":"alice"', b'"user":"malle"')     # 5 bytes, a valid name
    lines[4] = lines[4][:-30]                            # the last line torn by a kill
    wal.write_bytes(b"\n".join(lines[:4] + [lines[4]]))
    for line in lines[:4]:
        json.loads(line)                                 # every line still parses

    again = EventStore(tmp_path)
    try:
        assert sorted(e.id for e in again.load()) == ["e1", "e3"]
        assert len(again.rejected) == 2, again.rejected   # the torn line: silently skipped
        assert f"{wal} line 2: checksum mismatch" in again.rejected[0]
        assert f"{wal} line 4: checksum mismatch" in again.rejected[1]
        assert [r["record"] for r in _rejected(tmp_path)] == again.rejected
        assert '"post 7"' in _rejected(tmp_path)[0]["raw"]
        assert not again.unverified
    finally:
        again.close()


def test_a_post_text_and_a_user_name_edited_in_tinydb_are_set_aside_and_the_rest_loads(
        tmp_path):
    store = EventStore(tmp_path, checkpoint_min=5)
    store.load()
    _write(store, _events(1, 6))
    assert store.maybe_checkpoint()
    wait_until(store.finished, timeout=10, what="the fold")
    store.close()
    db_path = tmp_path / "db.json"
    db = json.loads(db_path.read_text())
    docs = db["events"]
    assert all("sum" in doc for doc in docs.values())
    by_id = {doc["id"]: number for number, doc in docs.items()}
    docs[by_id["e2"]]["data"]["text"] = "post 2, edited"
    docs[by_id["e5"]]["user"] = "mallory"
    db_path.write_text(json.dumps(db))                  # still valid JSON, valid events

    again = EventStore(tmp_path)
    try:
        assert sorted(e.id for e in again.load()) == ["e1", "e3", "e4", "e6"]
        assert len(again.rejected) == 2, again.rejected
        for event_id in ("e2", "e5"):
            assert any(f"{db_path} document {by_id[event_id]}: checksum mismatch" in r
                       for r in again.rejected)
        kept = _rejected(tmp_path)
        assert [r["record"] for r in kept] == again.rejected
        assert any("post 2, edited" in r["raw"] for r in kept)
        assert any("mallory" in r["raw"] for r in kept)
        assert not again.unverified
    finally:
        again.close()


def test_records_written_before_checksums_load_and_are_counted_unverified(tmp_path):
    (tmp_path / "wal-000001.jsonl").write_bytes(
        b"".join(P.dumps(e) + b"\n" for e in _events(3, 2)))          # no "sum"
    db = {"events": {"1": P.to_builtins(_events(1, 1)[0]),
                     "2": P.to_builtins(_events(2, 1)[0])}}
    (tmp_path / "db.json").write_text(json.dumps(db))
    store = EventStore(tmp_path)
    try:
        assert sorted(e.id for e in store.load()) == _ids(1, 4)
        assert store.rejected == []
        assert store.unverified == {"db.json": 2, "wal-000001.jsonl": 2}
    finally:
        store.close()


@pytest.mark.timeout(120)
def test_a_server_whose_tinydb_was_edited_sets_the_records_aside_and_pulls_them_again(
        make_cluster):
    """Issue 11, row 2, as an operator meets it: a post's text and a user name edited
    inside db.json (still valid JSON). The edited records are set aside with a log
    line each, never served; the peers' copies come back by the usual catch-up."""
    cluster = make_cluster(env={"SOCIAL_CHECKPOINT_IDLE_S": "0.3"}).start(3)
    cluster.wait_serving({1, 2, 3})
    posted = [cluster.cli("alice", "post", f"post {n}")["post"]["id"] for n in range(6)]
    cluster.wait_converged()
    folder = cluster.config.server_data_dir(3)

    def folded() -> bool:                              # the idle fold has run
        return set(posted) <= set(_tinydb_ids(folder))
    wait_until(folded, timeout=20, what="server 3's posts folded into db.json")
    assert cluster.terminate("server-3") == 0
    db = json.loads((folder / "db.json").read_text())
    posts = {d["id"]: n for n, d in db["events"].items() if d["kind"] == "post"}
    db["events"][posts[posted[1]]]["data"]["text"] = "post 1, edited"
    db["events"][posts[posted[4]]]["user"] = "mallory"
    (folder / "db.json").write_text(json.dumps(db))

    cluster.start_server(3)
    cluster.wait_serving({1, 2, 3})
    log = cluster.log_since_start("server-3")
    assert log.count("checksum mismatch") == 2, log
    assert log.count(f"stored record set aside in {folder / 'rejected.jsonl'}") == 2
    rows = cluster.wait_converged()
    assert len({row["digest"] for row in rows.values()}) == 1
    feed = cluster.cli("bob", "feed", "--server", "3")["posts"]
    assert sorted((p["id"], p["author"], p["text"]) for p in feed) == sorted(
        (rid, "alice", f"post {n}") for n, rid in enumerate(posted))

    def healed() -> bool:                              # the pulled copies folded in place
        bad: list = []
        read_folder(folder, lambda where, raw: bad.append(where))
        return not bad and folded()
    wait_until(healed, timeout=20, what="server 3's db.json repaired by a fold")


# --- a full or read-only disk (issue 11, row 5) ----------------------------------------------
class FailingWrites:
    """``os.write`` on the store's log: the first call writes ``short`` bytes and
    returns, the next raises ``code``; every other descriptor is written for real."""

    def __init__(self, store: EventStore, code: int, short: int) -> None:
        self.store, self.code, self.short = store, code, short
        self.real = os.write
        self.calls = 0

    def __call__(self, fd: int, data) -> int:
        if fd != self.store._fd:
            return self.real(fd, data)
        self.calls += 1
        if self.calls == 1:
            return self.real(fd, bytes(data[:self.short]))
        raise OSError(self.code, os.strerror(self.code))


@pytest.mark.parametrize("code, truncates", [(errno.ENOSPC, True), (errno.EDQUOT, True),
                                             (errno.EROFS, False), (errno.EIO, True)])
def test_a_write_that_fails_is_cut_back_reported_and_nothing_is_written_after(
        tmp_path, monkeypatch, code, truncates):
    store = EventStore(tmp_path)
    store.load()
    _write(store, _events(1, 3))
    wal = tmp_path / "wal-000001.jsonl"
    good = wal.read_bytes()
    for event in _events(4, 2):
        store.append(event)
    fake = FailingWrites(store, code, short=len(wal_line(_events(4, 1)[0])) // 2)
    monkeypatch.setattr(os, "write", fake)
    if not truncates:                                  # read-only: not even cut back
        monkeypatch.setattr(os, "ftruncate", lambda fd, n: (_ for _ in ()).throw(
            OSError(errno.EROFS, os.strerror(errno.EROFS))))
    with pytest.raises(DiskError) as failed:
        store.sync()
    assert str(failed.value) == f"cannot write {wal}: {os.strerror(code)}"
    assert store.failed is failed.value and fake.calls == 2
    assert failed.value.needed == sum(len(wal_line(e)) for e in _events(4, 2))   # to wait for
    monkeypatch.undo()
    if truncates:
        assert wal.read_bytes() == good                # no half line stays
    else:
        assert wal.read_bytes().startswith(good) and not wal.read_bytes().endswith(b"\n")
    with pytest.raises(DiskError):                     # at once, without touching the disk
        store.append(_events(6, 1)[0])
    with pytest.raises(DiskError):
        store.sync()
    with pytest.raises(DiskError):
        store.maybe_checkpoint(quiet_for=float("inf"), idle_s=0.0)
    size = wal.stat().st_size
    store.close()                                      # no error, nothing more written
    assert wal.stat().st_size == size
    again = EventStore(tmp_path)
    try:
        assert [e.id for e in again.load()] == _ids(1, 3)   # exactly what was synced
        assert again.rejected == []                    # a torn line is skipped, not set aside
    finally:
        again.close()


def test_a_log_segment_that_cannot_be_made_leaves_the_store_failed_not_raising(tmp_path,
                                                                                monkeypatch):
    store = EventStore(tmp_path)
    real_open = os.open

    def refuse_segments(path, *args, **kwargs):
        if Path(path).name.startswith("wal-"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", refuse_segments)
    try:
        assert store.load() == []                      # the events load all the same
        assert str(store.failed) == (f"cannot write {tmp_path / 'wal-000001.jsonl'}: "
                                     f"Read-only file system")
        with pytest.raises(DiskError):
            store.append(_events(1, 1)[0])
    finally:
        monkeypatch.undo()
        store.close()


def test_one_write_per_sync_however_many_events(tmp_path, monkeypatch):
    store = EventStore(tmp_path)
    store.load()
    calls = []
    real = os.write
    def counted(fd, data):
        if fd == store._fd:
            calls.append(len(data))
        return real(fd, data)
    monkeypatch.setattr(os, "write", counted)
    try:
        for event in _events(1, 500):
            store.append(event)
        assert calls == []                             # appends stay in memory
        store.sync()
        store.sync()                                   # nothing new: no write
        assert calls == [sum(len(wal_line(e)) for e in _events(1, 500))]
    finally:
        monkeypatch.undo()
        store.close()


def test_a_stale_db_tmp_is_removed_at_start_and_the_folder_loads(tmp_path):
    store = EventStore(tmp_path, checkpoint_min=5)
    store.load()
    _write(store, _events(1, 6))
    assert store.maybe_checkpoint()
    wait_until(store.finished, timeout=10, what="the fold")
    _write(store, _events(7, 2))
    store.close()
    (tmp_path / "db.tmp").write_bytes(b'{"events": {"1": {"id": "half a fo')   # a fold cut short
    again = EventStore(tmp_path)
    try:
        assert sorted(e.id for e in again.load()) == sorted(_ids(1, 8))
        assert again.stale_tmp and not (tmp_path / "db.tmp").exists()
    finally:
        again.close()


def test_a_record_set_aside_on_a_full_disk_is_still_named(tmp_path):
    good = P.dumps(_events(1, 1)[0])
    (tmp_path / "wal-000001.jsonl").write_bytes(good + b"\n" + b'{"id": "x"}\n' + good + b"\n")
    (tmp_path / REJECTED).mkdir()                      # cannot be appended to
    store = EventStore(tmp_path)
    try:
        assert [e.id for e in store.load()] == ["e1"]
        assert len(store.rejected) == 1
        assert "wal-000001.jsonl line 2" in store.rejected[0]
        assert f"(not kept in {REJECTED}: Is a directory)" in store.rejected[0]
    finally:
        store.close()
