"""Crash-safe folds (issue 11, row 6): a fold of log segments into db.json killed
after any of its steps never loses an event and never doubles one.

The fold (``checkpointer.Fold.steps``) is a generator of small steps, so a test
stops it after step k exactly where a SIGKILL of the checkpointer would, without
a process; reloading is ``store.read_folder``, what a server's start-up does.
The last test starts a real server on the state a kill between "db.json
replaced" and "segment deleted" leaves behind."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import protocol as P
from common.processes import wait_until
from servers.checkpointer import Fold
from servers.records import DOC_ID_SPAN, doc_id, document, line_document, read_line, wal_line
from servers.store import read_folder

pytestmark = pytest.mark.timeout(120)


def _event(origin: int, seq: int) -> P.Event:
    return P.Event(id=f"e{origin}x{seq}", kind="post", user="alice", lamport=seq,
                   ts=float(seq), origin=origin, seq=seq,
                   data=P.EventData(text=f"post {seq} of server {origin}"))


def _documents(folder: Path) -> dict[str, dict]:
    path = folder / "db.json"
    return json.loads(path.read_text()).get("events", {}) if path.exists() else {}


def _names_in_db(folder: Path) -> list[tuple[int, int]]:
    return sorted((d["origin"], d["seq"]) for d in _documents(folder).values())


def _write_legacy_db(folder: Path, events: list[P.Event], copies: int) -> None:
    """db.json as TinyDB's own ids left it (1, 2, ...): each event ``copies`` times,
    as the old refold did."""
    docs = {}
    for _ in range(copies):
        for event in events:
            docs[str(len(docs) + 1)] = P.to_builtins(event)
    (folder / "db.json").write_text(json.dumps({"events": docs}))


class Folder:
    """A data folder written the way a server writes it, and what it must hold."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written: dict[tuple[int, int], P.Event] = {}
        self.next_seq = {1: 1, 2: 1}
        self.segment_no = 0
        self.checkpointer: Fold | None = None     # alive between folds, gone after a kill

    def write_segment(self, origin: int, count: int) -> None:
        """A finished log segment of ``count`` new events of ``origin``."""
        self.segment_no += 1
        lines = []
        for _ in range(count):
            event = _event(origin, self.next_seq[origin])
            self.next_seq[origin] += 1
            self.written[(origin, event.seq)] = event
            lines.append(wal_line(event))
        (self.path / f"wal-{self.segment_no:06d}.jsonl").write_bytes(b"".join(lines))

    def fold(self, oldest: int, stop_after: int | None) -> None:
        """Fold the ``oldest`` segments; a kill after step ``stop_after`` (None: none)."""
        if self.checkpointer is None:
            self.checkpointer = Fold(self.path, fsync=False)
        segments = sorted(self.path.glob("wal-*.jsonl"))[:oldest]
        steps = self.checkpointer.steps(segments)
        for done, step in enumerate(steps, 1):
            if done == stop_after:
                steps.close()
                self.checkpointer = None           # killed: the next one starts from disk
                if step == "updated the table in memory":   # killed in mid-write of db.tmp
                    (self.path / "db.tmp").write_bytes(b'{"events": {"1')
                return

    def check(self, legacy_copies: int = 1) -> None:
        held, _segments = read_folder(self.path)
        assert held == self.written                # every event written, nothing else
        names = _names_in_db(self.path)
        for name in set(names):                    # a fold never adds a copy
            allowed = legacy_copies if name[0] == 3 else 1
            assert names.count(name) <= allowed, f"event {name} {names.count(name)} times"


ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("write"), st.sampled_from([1, 2]), st.integers(1, 4)),
    st.tuples(st.just("fold"), st.integers(1, 3), st.none() | st.integers(1, 8))),
    max_size=10)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=ACTIONS, legacy=st.integers(0, 3), legacy_copies=st.integers(1, 2),
       legacy_in_segment=st.booleans())
def test_kills_at_any_step_of_any_fold_never_lose_or_double_an_event(
        actions, legacy, legacy_copies, legacy_in_segment):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Folder(Path(tmp))
        # what the code before derived ids left: events of server 3 under TinyDB's
        # own ids, maybe twice, maybe still in a segment too
        old = [_event(3, seq) for seq in range(1, legacy + 1)]
        if old:
            _write_legacy_db(folder.path, old, legacy_copies)
            folder.written.update({(3, e.seq): e for e in old})
            if legacy_in_segment:
                folder.segment_no += 1
                (folder.path / f"wal-{folder.segment_no:06d}.jsonl").write_bytes(
                    b"".join(wal_line(e) for e in old))
        folder.check(legacy_copies)
        for action in actions:
            if action[0] == "write":
                folder.write_segment(action[1], action[2])
            else:
                folder.fold(action[1], action[2])
            folder.check(legacy_copies)
        # a restart: the start-up fold of everything left, to the end
        folder.checkpointer = None
        folder.fold(oldest=10 ** 6, stop_after=None)
        folder.check()
        assert list(folder.path.glob("wal-*.jsonl")) == []
        assert _names_in_db(folder.path) == sorted(folder.written)   # each exactly once
        ids = sorted(int(i) for i in _documents(folder.path))
        refolded = [n for n in folder.written if n[0] != 3 or legacy_in_segment]
        kept_legacy = [] if legacy_in_segment else list(range(1, legacy + 1))
        assert ids == sorted([doc_id(*n) for n in refolded] + kept_legacy)


def test_a_fold_stopped_after_each_step_then_folded_again_gives_the_same_db(tmp_path):
    """Each step in turn: the folder a kill after it leaves, folded again by a new
    checkpointer, holds byte for byte the db.json of a fold never killed."""
    reference = Folder(tmp_path / "reference")
    reference.path.mkdir()
    reference.write_segment(1, 5)
    reference.fold(oldest=1, stop_after=None)
    expected = (reference.path / "db.json").read_bytes()
    steps = list(Fold(reference.path, fsync=False).steps(
        [reference.path / "wal-000009.jsonl"]))            # gone: nothing to fold
    assert steps == ["read the segments", "deleted wal-000009.jsonl", "synced the folder"]
    for stop in range(1, 7):                   # 6 steps for one segment with events
        folder = Folder(tmp_path / f"stop-{stop}")
        folder.path.mkdir()
        folder.write_segment(1, 5)
        folder.fold(oldest=1, stop_after=stop)
        folder.check()
        Fold(folder.path, fsync=False).fold(sorted(folder.path.glob("wal-*.jsonl")))
        assert (folder.path / "db.json").read_bytes() == expected, f"killed after step {stop}"
        assert not list(folder.path.glob("wal-*.jsonl"))


@pytest.mark.parametrize("before", ["derived ids", "legacy ids, doubled"])
def test_a_server_started_on_a_fold_killed_before_the_delete_holds_each_event_once(
        make_cluster, before):
    """db.json holds a segment's events and the segment is still there, as a
    kill between the rename and the delete leaves it; a real server starts on it."""
    cluster = make_cluster()
    folder = cluster.config.server_data_dir(1)
    folder.mkdir(parents=True)
    state = Folder(folder)
    state.write_segment(1, 5)
    if before == "derived ids":
        steps = Fold(folder, fsync=False).steps(sorted(folder.glob("wal-*.jsonl")))
        for step in steps:
            if step == "replaced db.json":
                steps.close()                      # killed before the segment's delete
                break
    else:                                          # what the refold bug left
        _write_legacy_db(folder, list(state.written.values()), copies=2)
    assert (folder / "wal-000001.jsonl").exists() and len(_names_in_db(folder)) >= 5

    cluster.start(1)
    row = cluster.wait_serving({1})[1]
    assert row["events"] == 5
    wait_until(lambda: not (folder / "wal-000001.jsonl").exists(), timeout=20,
               what="the start-up fold")
    assert _names_in_db(folder) == sorted(state.written)          # each event once
    assert sorted(int(i) for i in _documents(folder)) == [DOC_ID_SPAN + n for n in range(1, 6)]
    assert cluster.servers()[1]["events"] == 5
    log = cluster.log_text("server-1")
    assert "5 events reloaded" in log
    if before != "derived ids":                    # documents from before checksums
        assert ("10 stored records carry no checksum (written before checksums), "
                "loaded unverified: db.json 10") in log


TEXTS = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Cf")), min_size=1,
                max_size=80).filter(str.strip)


@st.composite
def stored_events(draw) -> P.Event:
    kind = draw(st.sampled_from(["post", "dm", "follow", "seen"]))
    data = {"post": lambda: {"text": draw(TEXTS)},
            "dm": lambda: {"to": "bob", "text": draw(TEXTS)},
            "follow": lambda: {"target": "bob"},
            "seen": lambda: {"shown": draw(st.lists(st.from_regex(r"[0-9a-f]{4,12}-[0-9]{1,4}",
                                                                  fullmatch=True), max_size=5)),
                             "delivered": []}}[kind]()
    return P.convert({"id": f"r{draw(st.integers(0, 10**9))}", "kind": kind, "user": "alice",
                      "lamport": draw(st.integers(0, 10**12)),
                      "ts": draw(st.floats(0, 4e9, allow_nan=False)),
                      "origin": draw(st.integers(1, 99)), "seq": draw(st.integers(1, 10**12)),
                      "data": data, **({"attempt": 2} if draw(st.booleans()) else {})}, P.Event)


@settings(max_examples=300, deadline=None)
@given(event=stored_events(), flip=st.integers(0, 10**6))
def test_the_fold_reads_each_log_line_as_the_document_the_event_makes(event, flip):
    """``line_document`` takes a line vouched for by its checksum as JSON, without
    building the event: it must give what ``document`` of the event gives, and a
    line whose bytes changed must never pass as a document of other content."""
    line = wal_line(event).rstrip(b"\n")
    assert line_document(line) == document(event)
    assert line_document(P.dumps(event)) == document(event)      # from before checksums
    i = flip % len(line)
    damaged = line[:i] + bytes([line[i] ^ 0x01]) + line[i + 1:]
    try:
        got = line_document(damaged)
    except (P.ProtocolError, msgspec.DecodeError):
        return
    assert got == document(event) or got == document(read_line(damaged)[0])
