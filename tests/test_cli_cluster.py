"""The command line against a real cluster (issue 15): ``listen`` says when it loses
the cluster and when it has it back, and marks what it missed; ``status`` fits 100
columns unless asked for ``--wide``.

The listener is the real CLI as a subprocess; reader threads collect its stdout and
stderr lines, so a test waits for *lines* (with a deadline), never for time.
"""
from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from clients.listen import BACK, LOST
from common import protocol as P
from common.processes import ROOT, wait_until
from tests.faults import freeze, restart_broker, thaw
from tests.harness import Cluster

NOTICE_WITHIN = 10.0
"""Seconds for a listener to notice its broker is gone (ZeroMQ's heartbeats: ~1 s;
generous, the machine is shared)."""
BACK_WITHIN = 30.0
"""Seconds for it to be answered again once the broker is back (servers re-register)."""


class Lines:
    """The lines of one of a process's pipes, read by a thread as they come."""

    def __init__(self, pipe) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe) -> None:
        for line in pipe:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def wait_for(self, text: str, timeout: float, after: int = 0) -> int:
        """The index of the first line from ``after`` on that contains ``text``."""
        def found():
            for i, line in enumerate(self.snapshot()[after:], after):
                if text in line:
                    return i + 1           # 1-based, so that 0 stays falsy
            return None
        return wait_until(found, timeout, interval=0.05, what=repr(text)) - 1


def start_listener(cluster: Cluster, user: str, seconds: float = 300.0):
    proc = subprocess.Popen([sys.executable, "-m", "clients", "--user", user, "listen",
                             "--seconds", str(seconds)], cwd=ROOT, env=cluster.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, Lines(proc.stdout), Lines(proc.stderr)


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(10)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["kill", "freeze"])
def test_listen_says_connection_lost_and_reconnected_and_marks_what_it_missed(
        running: Cluster, fault: str):
    running.request("alice", P.OP_USERS, {})
    running.request("bob", P.OP_FOLLOW, {"target": "alice"})
    running.request("alice", P.OP_POST, {"text": "before bob came"})
    proc, out, err = start_listener(running, "bob")
    try:
        out.wait_for("listening as bob for 300 s", 20.0)
        missed = out.wait_for("alice posted: before bob came", 20.0)
        assert out.snapshot()[missed].endswith("(missed while away)")
        assert "(Ctrl-C to stop)" not in out.snapshot()[0]

        if fault == "kill":
            running.kill("broker")
        else:
            freeze(running, "broker")
        err.wait_for(LOST, NOTICE_WITHIN)
        if fault == "kill":
            restart_broker(running)
        else:
            thaw(running, "broker")
        err.wait_for(BACK, BACK_WITHIN)

        running.request("alice", P.OP_POST, {"text": "bob is back"}, deadline=20.0)
        live = out.wait_for("alice posted: bob is back", 20.0)
        assert not out.snapshot()[live].endswith("(missed while away)")
        assert err.snapshot().count(LOST) == 1
        assert err.snapshot().count(BACK) == 1
        assert proc.poll() is None
    finally:
        stop(proc)


@pytest.mark.timeout(120)
def test_status_fits_100_columns_and_wide_shows_every_field(running: Cluster):
    narrow = running.cli(None, "status", json=False)
    lines = narrow.splitlines()
    assert max(len(line) for line in lines) <= 100, narrow
    header = lines[0].split()
    assert header[:6] == ["id", "alive", "phase", "events", "digest", "lamport"]
    assert "offset_ms" in header and "skew_ms" in header
    assert any(line.startswith("offset_ms: ") for line in lines)        # the legend
    assert any(line.startswith("coordinator: ") for line in lines)

    wide = running.cli(None, "status", "--wide", json=False).splitlines()
    fields = set(running.cli(None, "status")["servers"][0]) - {"sums"}
    assert fields <= set(wide[0].split())
    assert not any(line.startswith("offset_ms: ") for line in wide)
