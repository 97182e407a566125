"""Issue 15: ``python run_all.py up`` as an operator expects it.

It checks its ports and data folder before it starts anything and refuses in one
line (exit 1) if either is in use, touching none of the live cluster's files; it
says ``ready: N servers serving`` once they serve; it exits non-zero, naming them,
when its children die; each run logs to a fresh ``run-<time>/`` with ``latest``.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from common import log_lines as LL
from common.processes import ROOT, free_port_base
from tests.harness import CHEAP_ACCOUNTS, FAST_TIMING

SERVERS = 3


class Up:
    """One ``run_all.py up`` process of a test; its stdout and stderr lines as they come."""

    def __init__(self, folder: Path, port_base: int, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOCIAL_")}
        env.update(FAST_TIMING, **CHEAP_ACCOUNTS, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "run_all.py", "up", "--servers", str(SERVERS), "--web-port", "0",
             "--port-base", str(port_base), "--data-dir", str(folder / "data"),
             "--log-dir", str(folder / "logs"), *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.seen: list[tuple[str, str]] = []
        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            threading.Thread(target=self._read, args=(name, stream), daemon=True).start()

    def _read(self, name: str, stream) -> None:
        for line in stream:
            self.lines.put((name, line.rstrip("\n")))

    def wait_line(self, predicate, timeout: float) -> str:
        """The first line (either stream) that ``predicate`` accepts, within ``timeout``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self.lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            self.seen.append(item)
            if predicate(item[1]):
                return item[1]
        raise AssertionError(f"no such line within {timeout:g} s; seen: {self.seen}")

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def text(self) -> str:
        """Every line seen so far (after the process ended: all of them)."""
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return "\n".join(line for _, line in self.seen)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)      # up stops its children within 2 s
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def ups():
    started: list[Up] = []

    def make(folder: Path, port_base: int, *args: str) -> Up:
        up = Up(folder, port_base, *args)
        started.append(up)
        return up
    yield make
    for up in reversed(started):
        up.stop()


def snapshot(folder: Path) -> dict[str, tuple[int, int] | str]:
    """Every file and link under ``folder``: (size, mtime_ns), or a link's target."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = os.readlink(path)
        elif path.is_file():
            st = path.stat()
            out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def is_ready(line: str) -> bool:
    return LL.parse(LL.READY, line) is not None


@pytest.mark.timeout(90)
def test_up_says_ready_and_a_second_up_is_refused_without_touching_the_first(tmp_path, ups):
    base = free_port_base()
    first = ups(tmp_path / "first", base)
    ready = first.wait_line(is_ready, 40)
    assert LL.parse(LL.READY, ready) == {"count": str(SERVERS)}
    logs, data = tmp_path / "first" / "logs", tmp_path / "first" / "data"
    run = logs / os.readlink(logs / "latest")
    assert run.name.startswith("run-") and (run / "server-1.log").is_file()
    before_logs, before_data = snapshot(logs), snapshot(data)

    # the same port base and data folder; the same data folder on other ports; the
    # same ports with another data folder: each refused at once, in one line
    for folder, port_base in ((tmp_path / "first", base),
                              (tmp_path / "first", free_port_base()),
                              (tmp_path / "other", base)):
        began = time.monotonic()
        second = ups(folder, port_base)
        code = second.wait_exit(timeout=10)
        took = time.monotonic() - began
        said = second.text().splitlines()
        assert code == 1 and took < 3.0, (code, took, said)
        assert len(said) == 1 and said[0].startswith("error: not started: "), said
    assert "in use" in said[0]

    after_logs, after_data = snapshot(logs), snapshot(data)
    assert set(after_logs) == set(before_logs)           # no new run folder, no new file
    assert after_logs["latest"] == before_logs["latest"]
    for name, (size, _) in ((n, v) for n, v in before_logs.items() if n.endswith(".err")):
        assert after_logs[name][0] == size, f"{name} was written to"
    for name, value in before_logs.items():              # logs only grow, never rewritten
        if isinstance(value, tuple):
            assert after_logs[name][0] >= value[0], name
    assert set(after_data) == set(before_data)
    for name in (n for n in before_data if n.endswith(("LOCK", ".members", ".issued", "up.lock"))):
        assert after_data[name] == before_data[name], f"{name} was touched"
    assert not (tmp_path / "other" / "logs").exists()    # the refused up made no run folder
    assert first.proc.poll() is None


@pytest.mark.timeout(60)
def test_each_up_logs_to_a_fresh_run_folder_and_latest_follows(tmp_path, ups):
    folder, base = tmp_path / "c", free_port_base()
    runs = []
    for _ in range(2):
        up = ups(folder, base)
        up.wait_line(is_ready, 40)
        runs.append(os.readlink(folder / "logs" / "latest"))
        up.stop()
        assert up.proc.returncode == 0
    assert runs[0] != runs[1]
    assert all((folder / "logs" / run / "broker.log").is_file() for run in runs)
    started = [LL.parse(LL.LAMPORT_START, (folder / "logs" / run / "server-1.log").read_text())
               for run in runs]
    # the second run's clock starts above every stamp the first one used
    assert int(started[1]["lamport"]) > int(started[0]["lamport"])


@pytest.mark.timeout(60)
def test_up_exits_non_zero_naming_its_children_when_they_die(tmp_path, ups):
    data = tmp_path / "c" / "data"
    data.mkdir(parents=True)
    for sid in range(1, SERVERS + 1):               # every server refuses to start on it
        (data / f"server-{sid}.lamport").write_bytes(b"0000000000000000\x0012 deadbeef\n")
    up = ups(tmp_path / "c", free_port_base())
    code = up.wait_exit(timeout=30)
    text = up.text()
    assert code == 1, text
    assert "error: stopping: server-1, server-2, server-3 died" in text, text
    assert "server-1.lamport is damaged" in text
    assert "ready:" not in text
