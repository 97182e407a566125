"""Issue 5, the demo: ``python run_all.py demo`` runs green, loses nothing, leaves nothing.

The demo is run as a user runs it, shortened, on free ports and in tmp folders.
Every process it starts is written to ``demo-pids.txt`` in its log folder, so the
test can check by pid that none is left running.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from common.processes import ROOT, wait_until
from tests.harness import free_port_base

SECONDS = 20
STEPS = ("1. The cluster starts", "2. The users arrive", "3. The coordinator is killed",
         "4. A new server joins", "comes back on its old data",
         "6. A server is removed while users keep writing", "8. The check", "Summary")


def demo_command(tmp_path: Path, seconds: float = SECONDS) -> list[str]:
    return [sys.executable, "run_all.py", "demo", "--seconds", str(seconds),
            "--port-base", str(free_port_base()), "--data-dir", str(tmp_path / "data"),
            "--log-dir", str(tmp_path / "logs")]


def started(log_dir: Path) -> dict[int, str]:
    """pid -> name of every process the demo started."""
    lines = (log_dir / "demo-pids.txt").read_text().split("\n")
    return {int(pid): name for name, pid in (line.split() for line in lines if line)}


def running(pid: int) -> bool:
    """Whether ``pid`` is still one of ours (not gone, not a zombie, not a reused pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    ours = any(module in cmdline for module in ("broker", "servers", "clients.demo.bots", "web"))
    return state != "Z" and ours


def fact(out: str, key: str) -> str:
    match = re.search(rf"^{key}\s*: (.*)$", out, re.M)
    assert match, f"no {key!r} in the summary:\n{out[-3000:]}"
    return match[1]


@pytest.mark.timeout(180)
def test_demo_runs_green_loses_no_acknowledged_write_and_stops_every_process(tmp_path):
    began = time.monotonic()
    done = subprocess.run(demo_command(tmp_path), cwd=ROOT, capture_output=True, text=True,
                          timeout=150)
    took = time.monotonic() - began
    out = done.stdout
    assert done.returncode == 0, f"{out[-4000:]}\n{done.stderr[-2000:]}"
    for step in STEPS:
        assert step in out, f"the demo did not tell {step!r}"
    assert "is the new coordinator" in out and "Berkeley round" in out
    assert "registers with a password drawn at random" in out, "the accounts line is missing"
    assert fact(out, "writes lost") == "0"
    few = fact(out, "acked with < 3 copies")          # a kill and a removal: some, said why
    assert few == "0" or re.match(r"^\d+ \((\d+ with \d+(, )?)+\): while a server", few), few
    assert int(fact(out, "writes acknowledged").split()[0]) > 20
    assert fact(out, "digests equal").startswith("yes")
    assert fact(out, "user errors") == "0"
    assert "still running: none" in out
    pids = started(tmp_path / "logs")
    names = set(pids.values())
    assert {"broker", "server-1", "server-2", "server-3", "server-4"} <= names
    assert sum(name.startswith("bot-") for name in names) >= 5
    assert sum(name == "server-3" for name in pids.values()) == 2      # killed, then back
    assert not [f"{name} ({pid})" for pid, name in pids.items() if running(pid)]
    for log in ("broker.log", "server-1.log", "server-4.log", "client-alice.log"):
        assert (tmp_path / "logs" / log).stat().st_size > 0
    assert took < 90, f"the {SECONDS}-second demo took {took:.0f} s"


@pytest.mark.timeout(120)
def test_demo_interrupted_with_ctrl_c_still_stops_every_process(tmp_path):
    demo = subprocess.Popen(demo_command(tmp_path, seconds=45), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("all registered" in line for line in lines), 60,
                   what="the bots to be running")
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(30)
        except subprocess.TimeoutExpired:        # never left behind, nor its children
            demo.kill()
            demo.wait(5)
            for pid in started(tmp_path / "logs"):
                if running(pid):
                    os.kill(pid, signal.SIGKILL)
            raise
        reader.join(5)
    assert demo.returncode != 0
    assert any("still running: none" in line for line in lines), "".join(lines[-30:])
    pids = started(tmp_path / "logs")
    assert len(pids) >= 1 + 3 + 5 + 1, pids           # broker, servers, bots, web panel
    assert "web" in pids.values(), pids
    assert not [f"{name} ({pid})" for pid, name in pids.items() if running(pid)]
    assert os.path.exists(tmp_path / "logs" / "broker.log")
