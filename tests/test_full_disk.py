"""A full or read-only disk (issue 11, row 5): the server that cannot write its
folder stops acknowledging and leaves the pool cleanly, its peers keep serving,
and it rejoins by itself, in the same process, once the folder takes writes
again; no event counts as held unless it is on disk (real processes, real
files, real mounts as the disk).

The disks: a small tmpfs filled up (ENOSPC); a read-only bind mount over the
folder (EROFS for every file opened after it: a tmpfs cannot be remounted
read-only while the server holds files open for writing); an ext4 image that
the kernel turns read-only under the open log, as it does a failing disk
(``errors=remount-ro``, ``trigger_fs_error``: EROFS on every write).

Every test here mounts, so it needs root; it is skipped, with the reason, when
not root or when ``mount`` refuses. Every mount is undone at the end of the test
(``umount -l``), whatever happens.
"""
from __future__ import annotations

import errno
import os
import re
import subprocess
from pathlib import Path

import pytest

from clients.connection import ClientError
from common import protocol as P
from common.processes import wait_until
from servers.store import EventStore, read_folder
from tests.harness import SERVING_LINE, Cluster

pytestmark = pytest.mark.timeout(90)

QUIET = {"SOCIAL_CHECKPOINT_MIN": "1000000", "SOCIAL_CHECKPOINT_IDLE_S": "3600"}
"""No fold during the test: the log is all that fills the disk."""
TEXT = "x" * 400
"""A post's text: a log line of about 600 bytes."""
HALT = "I stop acknowledging and leave the pool; I rejoin by myself once {folder} can be written"
HALT_AT_START = "I do not join the pool; I start again by myself once {folder} can be written"
AGAIN = "{folder} can be written again: restarting to rejoin"
STARTED = "| local - | started:"


class Disk:
    """The mounts of one test, undone at its end in reverse order."""

    def __init__(self) -> None:
        self.mounts: list[Path] = []

    def mount(self, *args: str) -> None:
        done = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise OSError(f"mount {' '.join(args)}: {done.stderr.strip()}")

    def tmpfs(self, folder: Path, size: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            self.mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
        except OSError as exc:
            pytest.skip(f"cannot mount a tmpfs here: {exc}")
        self.mounts.append(folder)

    def read_only_view(self, folder: Path) -> None:
        """A read-only mount of ``folder`` over itself: files already open are
        written through (a tmpfs cannot be remounted read-only while a file is
        open for writing: EBUSY), every file opened from now on is refused
        (EROFS), the next log segment first."""
        self.bind(folder, folder)
        try:
            self.mount("-o", "remount,ro,bind", str(folder))
        except OSError as exc:
            pytest.skip(f"cannot make a read-only bind mount here: {exc}")

    def ext4(self, folder: Path, image: Path, size: str = "8M") -> Path:
        """A fresh ext4 image mounted on ``folder`` with ``errors=remount-ro``; returns
        its ``trigger_fs_error`` switch: writing to it makes the kernel turn the disk
        read-only under every open file, as it does a failing disk."""
        folder.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["truncate", "-s", size, str(image)], check=True, timeout=30)
            subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True,
                           capture_output=True, timeout=60)
            self.mount("-o", "loop,errors=remount-ro", str(image), str(folder))
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"cannot mount an ext4 image here: {exc}")
        self.mounts.append(folder)
        device = next(line.split()[0] for line in Path("/proc/self/mounts").read_text()
                      .splitlines() if line.split()[1] == str(folder))
        switch = Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
        if not switch.exists():
            pytest.skip(f"this kernel has no {switch}")
        return switch

    def bind(self, source: Path, folder: Path) -> None:
        try:
            self.mount("--bind", str(source), str(folder))
        except OSError as exc:
            pytest.skip(f"cannot bind-mount here: {exc}")
        self.mounts.append(folder)

    def undo(self) -> None:
        for folder in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)
        self.mounts.clear()


@pytest.fixture
def disk():
    """Ask for it before ``make_cluster`` (or ``server3``): the clusters stop first."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test mounts a tmpfs as the server's disk")
    mounts = Disk()
    try:
        yield mounts
    finally:
        mounts.undo()


def fill(folder: Path, leave: int = 0) -> Path:
    """A ballast file in ``folder`` taking all its free space but ``leave`` bytes."""
    ballast = folder / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        st = os.statvfs(folder)
        size = st.f_bavail * st.f_frsize - leave
        block = bytes(1 << 16)
        while size > 0:
            try:
                size -= os.write(fd, block[:size])
            except OSError:                      # full: what it wrote stays
                break
    finally:
        os.close(fd)
    return ballast


class Server3:
    """Server 3 of a cluster of 3, on a disk of its own, and one user posting
    through the broker: what was acked, with how many copies."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.folder = cluster.config.server_data_dir(3)
        self.pid = 0
        self.acked: dict[str, int] = {}
        self._conn = None

    def start(self, servers=(1, 2, 3)) -> "Server3":
        """The broker and ``servers`` started and serving, then 10 posts acked."""
        self.cluster.group.start_broker()
        for server in servers:
            self.cluster.start_server(server)
        self.cluster.wait_serving(set(servers))
        self.pid = self.cluster.group.pid("server-3") if 3 in servers else 0
        assert [self.post() for _ in range(10)] == [len(servers)] * 10
        return self

    def post(self) -> int:
        if self._conn is None:
            self._conn = self.cluster.connection("ann", deadline=20.0)
        result = self._conn.request(P.OP_POST, {"text": TEXT})
        self.acked[result["post"]["id"]] = result["replicas"]
        return result["replicas"]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def log(self) -> str:
        return self.cluster.log_since_start("server-3")

    def row(self, phase: str) -> dict | None:
        status = self.cluster.servers().get(3)
        return status if status and status["alive"] and status["phase"] == phase else None

    def post_until_halted(self) -> None:
        def halted():
            self.post()
            return self.said(HALT)
        wait_until(halted, timeout=30, interval=0.0, what="server 3 to halt")

    def said(self, line: str) -> bool:
        return line.format(folder=self.folder) in self.log()

    def halted(self, kind: str, what: str = r"wal-\d+\.jsonl", line: str = HALT) -> dict:
        """Its one warning says what it could not write, why and what it does; its
        status row says halted and why; the broker keeps it out of the pool."""
        log, halt, why = self.log(), line.format(folder=self.folder), os.strerror(ERRNO[kind])
        assert re.search(rf"WARNING: cannot write {re.escape(str(self.folder))}/{what}: "
                         rf"{why}( \(.*\))?: {re.escape(halt)}", log), log
        assert log.count(halt) == 1
        assert "Traceback" not in log and "error in" not in log
        assert self.cluster.group.stderr_since_start("server-3") == ""
        status = wait_until(lambda: self.row("halted"), timeout=10,
                            what="status to show server 3 halted")
        assert status["waiting"] == f"{kind}: {self.folder} ({why}); rejoining once it can write"
        with pytest.raises(ClientError) as refused:
            self.cluster.request("bob", P.OP_FEED, {"limit": 10}, server=3, deadline=2.0)
        assert refused.value.code == P.ERR_NO_SUCH_SERVER
        return status

    def rejoined(self) -> None:
        """It said its folder takes writes again, served again, and: every acked post
        is on every server, the digests are equal, and server 3 is one process that
        started twice (never exited), with no traceback and nothing left behind."""
        def serving_again():
            after = self.log().split(AGAIN.format(folder=self.folder), 1)
            return len(after) == 2 and SERVING_LINE in after[1] and self.row("serving")
        wait_until(serving_again, timeout=30, what="server 3 to serve again")
        assert self.cluster.alive("server-3") and self.cluster.group.pid("server-3") == self.pid
        assert b"servers" in Path(f"/proc/{self.pid}/cmdline").read_bytes()
        assert self.log().count(STARTED) == 2, self.log()
        assert self.cluster.group.stderr_since_start("server-3") == ""
        live = self.cluster.wait_converged(timeout=20)
        assert sorted(live) == [1, 2, 3]
        assert len({r["digest"] for r in live.values()}) == 1, live
        for i in (1, 2, 3):
            feed = self.cluster.request("bob", P.OP_FEED, {"limit": P.MAX_LIMIT},
                                        server=i)["posts"]
            assert set(self.acked) <= {p["id"] for p in feed}, f"server {i} lacks acked posts"
        assert not (self.folder / "db.tmp").exists()
        assert not (self.folder / ".write-probe").exists()


ERRNO = {"disk full": errno.ENOSPC, "read-only": errno.EROFS}


@pytest.fixture
def server3(make_cluster):
    made: list[Server3] = []

    def make(env: dict) -> Server3:
        made.append(Server3(make_cluster(env=env)))
        return made[-1]
    yield make
    for case in made:
        case.close()


def test_a_full_disk_halts_the_server_its_peers_go_on_and_it_rejoins_once_space_is_freed(
        disk, server3):
    s3 = server3(QUIET)
    disk.tmpfs(s3.folder, "4m")
    s3.start()
    fill(s3.folder, leave=96 * 1024)                  # about 160 more lines fit
    s3.post_until_halted()
    s3.halted("disk full")
    assert [s3.post() for _ in range(20)] == [2] * 20   # servers 1 and 2 go on

    disk.mount("-o", "remount,size=64m", str(s3.folder))   # space freed
    s3.rejoined()
    assert s3.post() == 3


def test_a_read_only_folder_halts_the_server_and_it_rejoins_once_writable(disk, server3):
    s3 = server3({"SOCIAL_CHECKPOINT_IDLE_S": "1.0"})
    disk.tmpfs(s3.folder, "16m")
    s3.start()
    wait_until(lambda: "checkpoint:" in s3.log(), timeout=15,
               what="server 3's first fold (its folder quiet)")
    disk.read_only_view(s3.folder)
    for _ in range(10):                  # the open log segment still takes these...
        s3.post()
    # ...and the next segment, made after 1 s without writes, is refused
    wait_until(lambda: s3.said(HALT), timeout=15, what="server 3 to halt")
    s3.halted("read-only")
    assert [s3.post() for _ in range(10)] == [2] * 10

    disk.mount("-o", "remount,rw,bind", str(s3.folder))
    s3.rejoined()


def test_a_server_started_on_a_full_disk_waits_as_one_process_and_serves_once_freed(
        disk, server3):
    s3 = server3(QUIET)
    disk.tmpfs(s3.folder, "1m")
    ballast = fill(s3.folder)
    s3.start(servers=(1, 2))
    s3.cluster.start_server(3)
    s3.pid = s3.cluster.group.pid("server-3")
    wait_until(lambda: s3.said(HALT_AT_START), timeout=15,
               what="server 3 to say it cannot write its folder")
    s3.halted("disk full", what=re.escape(".write-probe"), line=HALT_AT_START)
    assert s3.log().count(STARTED) == 1 and SERVING_LINE not in s3.log()
    assert [s3.post() for _ in range(5)] == [2] * 5    # still without server 3

    ballast.unlink()
    s3.rejoined()


def test_a_disk_the_kernel_turns_read_only_under_the_open_log_halts_and_a_new_one_rejoins(
        disk, server3, tmp_path):
    """The read-only disk as it comes: ext4 with ``errors=remount-ro`` meeting an
    error. Writes to the open log fail (EROFS), and so does cutting it back; such a
    disk needs an unmount and fsck, so the operator puts the folder's files on a new
    disk mounted in its place, and the server rejoins from them by itself."""
    s3 = server3(QUIET)
    switch = disk.ext4(s3.folder, tmp_path / "disk.img")
    s3.start()
    switch.write_text("test\n")                        # the kernel: remounting read-only
    s3.post_until_halted()
    s3.halted("read-only")
    assert [s3.post() for _ in range(10)] == [2] * 10

    spare = tmp_path / "new-disk"                      # a new disk, the files copied onto it
    disk.tmpfs(spare, "16m")
    for path in s3.folder.glob("wal-*.jsonl"):
        (spare / path.name).write_bytes(path.read_bytes())
    disk.bind(spare, s3.folder)                        # in place, all at once
    s3.rejoined()


def _events(count: int) -> list[P.Event]:
    return [P.Event(id=f"e{n}", kind="post", user="alice", lamport=n, ts=float(n), origin=1,
                    seq=n, data=P.EventData(text=f"{n} {TEXT}")) for n in range(1, count + 1)]


def test_a_fold_that_cannot_write_leaves_no_db_tmp_loses_nothing_and_is_tried_again(
        disk, tmp_path):
    folder = tmp_path / "store"
    disk.tmpfs(folder, "192k")
    store = EventStore(folder, checkpoint_min=10, retry_s=0.0)
    try:
        store.load()
        events = _events(200)                        # a 107 KB segment, and db.json as large
        for event in events:
            store.append(event)
        store.sync()
        assert store.maybe_checkpoint(quiet_for=1.0)
        wait_until(lambda: store.finished() or store.fold_failed, timeout=20,
                   what="the fold to fail")
        assert re.fullmatch(rf"cannot write {re.escape(str(folder))}/db\.tmp: "
                            rf"No space left on device", store.fold_failed)
        assert not (folder / "db.tmp").exists() and not (folder / "db.json").exists()
        held, segments = read_folder(folder)
        assert sorted(held) == [(1, e.seq) for e in events]        # the log still holds all
        assert [s.name for s in segments] == ["wal-000001.jsonl", "wal-000002.jsonl"]

        disk.mount("-o", "remount,size=8m", str(folder))
        store.maybe_checkpoint(quiet_for=1.0)        # the failed segment, sent again
        done = wait_until(store.finished, timeout=20, what="the fold tried again")
        assert done[0][0] == 200
        assert not (folder / "db.tmp").exists() and (folder / "db.json").exists()
        held, segments = read_folder(folder)
        assert sorted(held) == [(1, e.seq) for e in events]
        assert [s.name for s in segments] == ["wal-000002.jsonl"]   # the fresh one, empty
    finally:
        store.close()
