"""A damaged data folder (issue 11, row 4): junk in db.json, db.json of the wrong shape,
db.json deleted, the folder read-only or otherwise unusable.

Never a traceback: a start-up problem is one clear line on stderr and exit code 1, or
the server repairs itself: a damaged db.json is moved aside (never over an earlier
one), a deleted one is noticed, each with one log line naming the file, and the
server serves only once it holds everything a serving peer held (``DAMAGED`` marks
the folder until then). Unit tests on the store first, then real processes."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from common import protocol as P
from common.processes import ROOT, wait_until
from servers.records import wal_line
from servers.store import DamagedFile, EventStore, read_folder
from tests.harness import SERVING_LINE, Cluster

pytestmark = pytest.mark.timeout(60)

JUNK = b"\x00\xffjunk{\"events\": "
WRONG_SHAPES = {
    "a list": (b"[]", "the top level is a list, not an object"),
    "a number": (b"5", "the top level is a number, not an object"),
    "events a number": (b'{"events": 5}', "table 'events' is a number, not an object"),
    "a document a string": (b'{"events": {"1": "x"}}',
                            "document 1 of table 'events' is a string, not an object"),
    "a document a list": (b'{"events": {"1": [["id", "e1"]]}}',
                          "document 1 of table 'events' is a list, not an object"),
    "an id not a number": (b'{"events": {"one": {}}}',
                           "table 'events' has a document id 'one', not a number"),
    "an id in other digits": ('{"events": {"\u0663": {}}}'.encode(),
                              "table 'events' has a document id '\u0663', not a number"),
}


def _events(first: int, count: int, origin: int = 1) -> list[P.Event]:
    return [P.Event(id=f"e{origin}x{n}", kind="post", user="alice", lamport=n, ts=float(n),
                    origin=origin, seq=n, data=P.EventData(text=f"post {n}"))
            for n in range(first, first + count)]


def _folded_folder(folder: Path) -> list[str]:
    """A folder as a server leaves it after a fold: db.json holding 1..5, the log
    segment wal-000002 holding 6..7. Returns the ids in it."""
    store = EventStore(folder, checkpoint_min=5)
    store.load()
    for event in _events(1, 5):
        store.append(event)
    store.sync()
    assert store.maybe_checkpoint()
    wait_until(store.finished, timeout=10, what="the fold")
    for event in _events(6, 2):
        store.append(event)
    store.close()
    assert sorted(p.name for p in folder.glob("wal-*")) == ["wal-000002.jsonl"]
    return [e.id for e in _events(1, 7)]


def _load(folder: Path) -> tuple[EventStore, list[str]]:
    """A store on ``folder``, loaded (close it), and the ids it loaded in seq order."""
    store = EventStore(folder)
    events = store.load()
    return store, [e.id for e in sorted(events, key=lambda e: e.seq)]


# --- the store -------------------------------------------------------------------------------
@pytest.mark.parametrize("content, reason", [
    (b"garbage", "is not valid JSON (unexpected character, expected a JSON value: line 1 "
                 "column 1)"),
    (JUNK, "is not valid JSON (str is not valid UTF-8"),
    (b'{"events": {"1": {"id": "e1x1"', "is not valid JSON (unexpected end of data: line 1"),
    (b"", "is empty"),
    *[(content, f"is not a TinyDB file ({why})") for content, why in WRONG_SHAPES.values()]],
    ids=["junk", "not UTF-8", "cut short", "empty", *WRONG_SHAPES])
def test_a_db_json_that_is_not_a_tinydb_file_is_moved_aside_named_and_the_log_still_loads(
        tmp_path, content, reason):
    _folded_folder(tmp_path)
    db = tmp_path / "db.json"
    db.write_bytes(content)
    store, ids = _load(tmp_path)
    try:
        assert ids == ["e1x6", "e1x7"]                  # the log segment loads
        assert store.needs_repair == "db.json"
        [problem] = store.problems
        assert problem.startswith(f"{db} {reason}")
        assert f": moved to {tmp_path / 'db.json.corrupt-1'}; what it held is pulled again " \
               f"from a peer before serving" in problem
        assert f"delete {tmp_path / 'DAMAGED'} to serve what is left" in problem
        assert (tmp_path / "db.json.corrupt-1").read_bytes() == content   # kept as it was
        marker = (tmp_path / "DAMAGED").read_text().splitlines()
        assert len(marker) == 2 and marker[0] == "db.json" and marker[1].startswith(f"{db} {reason}")
        # the checkpointer folds into an empty db.json, not into the junk
        wait_until(lambda: json.loads(db.read_text()).get("events"), timeout=10,
                   what="the start-up fold into the new db.json")
    finally:
        store.close()


def test_a_second_damaged_db_json_never_overwrites_the_first(tmp_path):
    _folded_folder(tmp_path)
    for n, junk in enumerate([b"first junk", b"[1, 2]"], 1):
        (tmp_path / "db.json").write_bytes(junk)
        store, _ = _load(tmp_path)
        store.close()
        assert f"moved to {tmp_path / f'db.json.corrupt-{n}'};" in store.problems[-1]
    assert (tmp_path / "db.json.corrupt-1").read_bytes() == b"first junk"
    assert (tmp_path / "db.json.corrupt-2").read_bytes() == b"[1, 2]"


def test_reading_a_damaged_folder_without_a_handler_raises_and_changes_nothing(tmp_path):
    _folded_folder(tmp_path)
    (tmp_path / "db.json").write_bytes(b"[]")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DamagedFile, match=r"db\.json is not a TinyDB file \(the top level is "
                                          r"a list"):
        read_folder(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_deleted_db_json_is_noticed_from_the_log_segments_numbers(tmp_path):
    _folded_folder(tmp_path)
    (tmp_path / "db.json").unlink()
    store, ids = _load(tmp_path)
    try:
        assert ids == ["e1x6", "e1x7"]
        assert store.needs_repair == "db.json missing"
        assert store.problems == [
            f"{tmp_path / 'db.json'} is missing (deleted?): what it held is pulled again from "
            f"a peer before serving (if no peer will ever hold it, delete "
            f"{tmp_path / 'DAMAGED'} to serve what is left)"]
        assert not list(tmp_path.glob("db.json.corrupt-*"))
        assert json.loads((tmp_path / "db.json").read_text()) is not None   # a valid one again
    finally:
        store.close()


def test_a_folder_never_folded_is_not_taken_for_one_whose_db_json_was_deleted(tmp_path):
    """Starts without a write reopen their empty segment: its number moves on only
    after a fold of events, so a fresh folder restarted many times reports nothing."""
    for _ in range(4):
        store, ids = _load(tmp_path)
        store.close()
        assert ids == [] and store.problems == [] and store.needs_repair is None
    assert [p.name for p in tmp_path.glob("wal-*")] == ["wal-000001.jsonl"]
    store = EventStore(tmp_path)
    store.load()
    store.append(_events(1, 1)[0])
    store.close()                                         # one event, never folded
    for _ in range(2):
        store, ids = _load(tmp_path)
        store.close()
        assert ids == ["e1x1"] and store.problems == []


def test_the_damage_is_remembered_until_a_peer_repaired_it(tmp_path):
    """A server killed before its repair syncs again at the next start: the marker says
    so, whatever the folder looks like by then; ``repaired`` removes it."""
    _folded_folder(tmp_path)
    (tmp_path / "db.json").write_bytes(JUNK)
    store, _ = _load(tmp_path)
    store.close()                                         # not repaired
    store, ids = _load(tmp_path)
    try:
        assert store.needs_repair == "db.json"
        [problem] = store.problems
        assert problem.startswith(f"{tmp_path} was damaged at an earlier start (db.json) and "
                                  f"no peer has given back what it lost yet")
        store.repaired()
        assert not (tmp_path / "DAMAGED").exists() and store.needs_repair is None
    finally:
        store.close()
    store, _ = _load(tmp_path)
    store.close()
    assert store.needs_repair is None and store.problems == []


def test_a_marker_holding_junk_still_counts_and_says_nothing_unprintable(tmp_path):
    (tmp_path / "DAMAGED").write_bytes(b"\x1b[31m\xff" + b"x" * 500)
    store, _ = _load(tmp_path)
    store.close()
    assert store.needs_repair is not None and len(store.needs_repair) <= 40
    assert store.needs_repair.isprintable()
    (tmp_path / "DAMAGED").write_bytes(b"")
    store, _ = _load(tmp_path)
    store.close()
    assert store.needs_repair == "unknown"


def test_stray_files_named_like_log_segments_are_left_alone(tmp_path):
    (tmp_path / "db.json").write_bytes(b"{}")
    (tmp_path / "wal-copy.jsonl").write_bytes(wal_line(_events(1, 1)[0]))
    (tmp_path / "wal-1000000.jsonl").write_bytes(wal_line(_events(2, 1)[0]))
    (tmp_path / "wal-999999.jsonl").write_bytes(wal_line(_events(1, 1)[0]))
    held, segments = read_folder(tmp_path)
    assert [p.name for p in segments] == ["wal-999999.jsonl", "wal-1000000.jsonl"]  # by number
    assert sorted(held) == [(1, 1), (1, 2)]


# --- real processes ------------------------------------------------------------------------------
FAST_FOLDS = {"SOCIAL_CHECKPOINT_MIN": "10", "SOCIAL_CHECKPOINT_IDLE_S": "0.3"}
"""Folds after 10 events or 0.3 s without writes: db.json holds events within the test."""


def _post(c: Cluster, text: str, server: int) -> str:
    return c.request("ann", P.OP_POST, {"text": text}, server=server)["post"]["id"]


def _ids_on(c: Cluster, server: int) -> set[str]:
    return {p["id"] for p in c.request("bob", P.OP_FEED, {"limit": 1000}, server=server)["posts"]}


def _folded_ids(folder: Path) -> set[str]:
    try:
        return {d["id"] for d in json.loads((folder / "db.json").read_bytes())["events"].values()}
    except (OSError, ValueError, KeyError):
        return set()


def _acked_and_folded(c: Cluster, servers=(1, 2, 3), n: int = 12) -> list[str]:
    """Posts acked through each of ``servers``, until server 3's db.json holds them all."""
    c.request("ann", P.OP_REGISTER, {}, server=servers[0])
    acked = [_post(c, f"before {i}", server=servers[i % len(servers)]) for i in range(n)]
    folder = c.config.server_data_dir(3)
    wait_until(lambda: set(acked) <= _folded_ids(folder), timeout=20,
               what="server 3's posts folded into its db.json")
    return acked


def _all_there(c: Cluster, acked: list[str]) -> None:
    """Every acked post on every server, and the three digests equal."""
    rows = c.wait_converged(timeout=20)
    assert set(rows) == {1, 2, 3} and len({row["digest"] for row in rows.values()}) == 1
    for server in (1, 2, 3):
        missing = set(acked) - _ids_on(c, server)
        assert not missing, f"server {server} lacks {missing}"


def _one_start_that_repaired_before_serving(c: Cluster, damage: str) -> str:
    """Server 3's log since its start: one start, the repair, then serving, with what it
    pulled; no crash, nothing on stderr."""
    log = c.log_since_start("server-3")
    assert log.count("| started:") == 1, log
    assert c.alive("server-3") and c.group.stderr_since_start("server-3") == ""
    repaired = log.index(f"repaired ({damage}): I hold all that server-")
    serving = log.index(SERVING_LINE)
    assert repaired < serving
    pulled = re.search(r"caught up: \d+ events, digest \w+; pulled ([\d,]+) events: ",
                       log[serving:])
    assert pulled and int(pulled[1].replace(",", "")) > 0, log[serving:serving + 300]
    assert not (c.config.server_data_dir(3) / "DAMAGED").exists()
    return log


@pytest.mark.timeout(150)
@pytest.mark.parametrize("content, reason", [(JUNK, "is not valid JSON"),
                                             (b"[]", "is not a TinyDB file")],
                         ids=["junk", "a list"])
def test_a_server_whose_db_json_is_damaged_moves_it_aside_syncs_and_then_serves(
        make_cluster, content, reason):
    c = make_cluster(env=FAST_FOLDS).start(3)
    c.wait_serving({1, 2, 3})
    acked = _acked_and_folded(c)
    assert c.terminate("server-3") == 0
    folder = c.config.server_data_dir(3)
    (folder / "db.json").write_bytes(content)
    acked += [_post(c, f"while 3 is away {i}", server=1 + i % 2) for i in range(4)]

    c.start_server(3)
    c.wait_serving({1, 2, 3}, timeout=30)
    log = _one_start_that_repaired_before_serving(c, "db.json")
    assert f"WARNING: {folder / 'db.json'} {reason}" in log
    assert f"moved to {folder / 'db.json.corrupt-1'}; what it held is pulled again" in log
    assert (folder / "db.json.corrupt-1").read_bytes() == content
    acked += [_post(c, f"after {i}", server=1 + i % 3) for i in range(3)]
    _all_there(c, acked)
    rows = c.servers()
    assert {row["durability"] for row in rows.values()} == {"flush"}
    table = c.cli(None, "status", "--wide", json=False)       # every column
    assert "durability" in table.splitlines()[0] and "flush" in table


@pytest.mark.timeout(150)
def test_a_server_whose_db_json_was_deleted_says_so_and_waits_for_a_serving_peer(make_cluster):
    """Alone, it waits (log and status); once its peers serve, it syncs from one of
    them, then serves. Servers 1 and 2 take every write, so server 3 owes no events of
    its own: only the damage rule keeps it from serving what is left."""
    c = make_cluster(env=FAST_FOLDS).start(3, "--fsync")
    c.wait_serving({1, 2, 3})
    acked = _acked_and_folded(c, servers=(1, 2))
    for name in ("server-1", "server-2", "server-3"):
        assert c.terminate(name) == 0
    folder = c.config.server_data_dir(3)
    (folder / "db.json").unlink()

    c.start_server(3, "--fsync")
    waiting = "my data folder was damaged (db.json missing): waiting for a peer to sync from"
    wait_until(lambda: f"not serving: {waiting}" in c.log_since_start("server-3"),
               timeout=15, what="server 3 to say it waits for a peer")
    row = wait_until(lambda: c.servers().get(3, {}).get("waiting") and c.servers()[3],
                     timeout=10, what="status to say why server 3 waits")
    assert row["phase"] == "syncing" and row["waiting"] == waiting
    assert row["durability"] == "fsync"
    log = c.log_since_start("server-3")
    assert f"WARNING: {folder / 'db.json'} is missing (deleted?): what it held is pulled " \
           f"again from a peer before serving" in log
    assert "durability fsync: a write counts as held here once my log has fsynced it" in log

    c.start_server(1, "--fsync")
    c.start_server(2, "--fsync")
    c.wait_serving({1, 2, 3}, timeout=30)
    _one_start_that_repaired_before_serving(c, "db.json missing")
    acked += [_post(c, f"after {i}", server=1 + i % 3) for i in range(3)]
    _all_there(c, acked)


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _run(c: Cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=c.env,
                          capture_output=True, text=True, timeout=30)


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ")
    return line


@pytest.mark.timeout(60)
def test_a_read_only_data_folder_is_one_line_and_nothing_is_written(make_cluster):
    if os.geteuid() != 0:
        pytest.skip("needs root for a read-only bind mount (chmod binds no root)")
    c = make_cluster()
    folder = c.config.server_data_dir(3)
    folder.mkdir(parents=True)
    (folder / "wal-000001.jsonl").write_bytes(b"".join(wal_line(e) for e in _events(1, 3)))
    (folder / "LOCK").write_text("1\n")
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        ro = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True)
        if ro.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {ro.stderr.decode().strip()}")
        files = _files(folder)
        line = _one_error_line(_run(c, "servers", "--id", "3"))
        assert line == (f"error: cannot write {folder} (Read-only file system): a server "
                        f"needs its data folder writable")
        assert _files(folder) == files
        assert not c.config.log_path("server-3").exists()      # stopped before its log
        assert not c.config.issued_path(3).exists()
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _listening(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


@pytest.mark.timeout(60)
def test_every_start_up_problem_is_one_line_naming_the_path_or_port(make_cluster):
    c = make_cluster()
    cfg = c.config
    data, logs = Path(cfg.data_dir), Path(cfg.log_dir)
    folder = cfg.server_data_dir(3)

    data.mkdir(parents=True)
    folder.write_text("a file where the folder should be")
    assert _one_error_line(_run(c, "servers", "--id", "3")) == (
        f"error: cannot write {folder} (it is a file, not a folder): a server needs its data "
        f"folder writable")
    folder.unlink()

    (folder / "db.json").mkdir(parents=True)
    assert _one_error_line(_run(c, "servers", "--id", "3")) == (
        f"error: cannot use {folder / 'db.json'} (Is a directory)")
    shutil.rmtree(folder)

    holder = _listening(cfg.peer_port(3))
    try:
        assert _one_error_line(_run(c, "servers", "--id", "3")) == (
            f"error: cannot listen on {cfg.endpoint(cfg.peer_port(3))} (Address already in "
            f"use): another process has the port (a second cluster on the same --port-base?)")
        assert sorted(p.name for p in folder.iterdir()) == ["LOCK"]   # the folder untouched
        assert "cannot start: cannot listen on" in c.log_text("server-3")
    finally:
        holder.close()

    holder = _listening(cfg.frontend_port)
    try:
        assert _one_error_line(_run(c, "broker")) == (
            f"error: cannot listen on {cfg.endpoint(cfg.frontend_port)} (Address already in "
            f"use): another process has the port (a second cluster on the same --port-base?)")
    finally:
        holder.close()

    shutil.rmtree(logs)
    logs.write_text("a file where the log folder should be")
    assert _one_error_line(_run(c, "broker")) == (
        f"error: cannot write {logs / 'broker.log'} ({logs} is a file, not a folder): every "
        f"process needs its log file writable")


@pytest.mark.timeout(60)
def test_a_damaged_member_list_is_one_line_and_nothing_is_written(make_cluster):
    """``data/server-N.members`` (issue 13) with a flipped byte: the server says which
    file and what to do, in one line, before it touches its folder."""
    c = make_cluster()
    c.config.members_path(3).parent.mkdir(parents=True, exist_ok=True)
    c.config.members_path(3).write_text("1 2 \x003\n")
    line = _one_error_line(_run(c, "servers", "--id", "3"))
    assert f"{c.config.members_path(3)} is damaged" in line
    assert "delete it to learn them again from the peers" in line
    assert not c.config.server_data_dir(3).exists()
