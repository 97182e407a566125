"""One owner per data folder and per log file (issue 11, row 7): a second process
on a live server's folder, or on the broker's log, exits at once with one line and
writes nothing (real processes, real files)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from common.ownership import InUse, claim, pid_alive, release
from common.processes import ROOT, ProcessGroup, wait_until

pytestmark = pytest.mark.timeout(120)

QUIET_FOLDER = {"SOCIAL_CHECKPOINT_IDLE_S": "3600"}
"""No idle fold during the test: the live server's folder changes only on a write."""


def _files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir())}




def _run_second(cluster, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=cluster.env,
                          capture_output=True, text=True, timeout=30)
    return done, time.monotonic() - started


def test_a_second_server_or_broker_on_live_folders_exits_at_once_and_writes_nothing(
        make_cluster):
    cluster = make_cluster(env=QUIET_FOLDER).start(3)
    cluster.wait_serving({1, 2, 3})
    for n in range(5):
        cluster.cli("alice", "post", f"before {n}")
    folder = cluster.config.server_data_dir(1)
    files = _files(folder)
    assert any(name.startswith("wal-") and size for name, size in files.items()), files
    err_path = cluster.group.err_path("server-1")
    err_before = err_path.read_bytes()
    server_pid, broker_pid = cluster.group.pid("server-1"), cluster.group.pid("broker")

    done, seconds = _run_second(cluster, "servers", "--id", "1")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"error: {folder} is in use by another process (pid {server_pid})"]
    assert seconds < 10
    assert _files(folder) == files                      # no new segment, nothing written
    assert (folder / "LOCK").read_text().split() == [str(server_pid)]
    assert err_path.read_bytes() == err_before
    assert cluster.log_text("server-1").count("| started:") == 1

    broker_log = cluster.config.log_path("broker")
    done, _ = _run_second(cluster, "broker")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"error: {broker_log} is in use by another process (pid {broker_pid})"]
    assert cluster.log_text("broker").count("broker up:") == 1

    # as a second `run_all.py up` would: its server's stderr is appended to the same
    # .err file, which keeps what the first server wrote there
    other = ProcessGroup(cluster.config, cluster.env_extra)
    try:
        assert other.start_server(1).wait(30) == 1
        assert err_path.read_bytes().startswith(err_before)
        assert other.stderr_since_start("server-1").splitlines() == [
            f"error: {folder} is in use by another process (pid {server_pid})"]
    finally:
        other.stop_all()
    assert _files(folder) == files

    # the first server never noticed: it serves, and holds every write
    cluster.cli("alice", "post", "after")
    feed = cluster.cli("bob", "feed", "--server", "1")
    assert len(feed["posts"]) == 6
    assert set(cluster.wait_converged()) == {1, 2, 3}


def test_a_killed_server_restarts_at_once_on_its_folder(make_cluster):
    """The kernel drops the lock with its owner (and its checkpointer, which shares it)."""
    cluster = make_cluster().start(3)
    cluster.wait_serving({1, 2, 3})
    cluster.cli("alice", "post", "hello")
    cluster.kill("server-1")
    cluster.start_server(1)
    cluster.wait_serving({1, 2, 3})
    assert "in use" not in cluster.group.stderr_since_start("server-1")


HOLDER = textwrap.dedent("""
    import fcntl, os, subprocess, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"%d\\n" % os.getpid())
    # a child holding the lock on (as a checkpointer does) until its stdin closes
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             pass_fds=[fd])
    print(child.pid, flush=True)
""")


def test_a_lock_whose_taker_is_dead_is_waited_for_not_refused(tmp_path):
    path = tmp_path / "LOCK"
    taker = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child = int(taker.stdout.readline())
    try:
        assert taker.wait(10) == 0
        with pytest.raises(InUse, match=rf"is in use by another process \(pid {taker.pid}\)"):
            claim(path, orphan_wait=0.2)                 # the child still holds it
        got: list = []
        waiter = threading.Thread(target=lambda: got.append(claim(path, orphan_wait=30)))
        waiter.start()
        taker.stdin.close()                              # the child lets go
        waiter.join(30)
        assert got and isinstance(got[0], int)
        release(got[0])
    finally:
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)
        wait_until(lambda: not pid_alive(child), timeout=10, what="the lock's child to exit")
