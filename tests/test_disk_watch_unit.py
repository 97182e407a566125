"""DiskWatch: a server that cannot write its folder halts, probes, and restarts once
it can (the probe is a stand-in, the clock a number); ``probe_folder`` on real files."""
from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

from servers.disk_watch import WAITING_MAX, DiskWatch
from servers.store import PROBE_FILE, DiskError, probe_folder
from tests.fakes import TalkLog

pytestmark = pytest.mark.timeout(60)

FOLDER = Path("data/server-3")
T0 = 1000.0


def full(name: str = "wal-000002.jsonl") -> DiskError:
    return DiskError(FOLDER / name, OSError(errno.ENOSPC, "No space left on device"))


class Probe:
    """Fails while ``problem`` is set; counts its calls."""

    def __init__(self) -> None:
        self.problem: DiskError | None = full(PROBE_FILE)
        self.calls = 0
        self.needed: list[int] = []

    def __call__(self, needed: int) -> DiskError | None:
        self.calls += 1
        self.needed.append(needed)
        return self.problem


def test_the_first_failure_halts_with_one_line_and_says_why_in_status():
    log, probe = TalkLog(), Probe()
    watch = DiskWatch(FOLDER, log, probe)
    assert not watch.halted and watch.waiting is None and watch.next_deadline() is None
    assert watch.fail(full(), T0)
    assert not watch.fail(full("wal-000003.jsonl"), T0 + 1)       # halted already
    assert watch.halted and str(watch.failure).endswith("wal-000002.jsonl: No space left on device")
    assert log.lines == [
        "WARNING cannot write data/server-3/wal-000002.jsonl: No space left on device: I stop "
        "acknowledging and leave the pool; I rejoin by myself once data/server-3 can be written"]
    assert watch.waiting == ("disk full: data/server-3 (No space left on device); "
                             "rejoining once it can write")


def test_a_failure_at_start_says_the_server_never_joined():
    log = TalkLog()
    DiskWatch(FOLDER, log, Probe()).fail(full(PROBE_FILE), T0, at_start=True)
    assert log.lines == [
        "WARNING cannot write data/server-3/.write-probe: No space left on device: I do not "
        "join the pool; I start again by myself once data/server-3 can be written"]


@pytest.mark.parametrize("code, kind", [(errno.ENOSPC, "disk full"), (errno.EDQUOT, "disk full"),
                                        (errno.EROFS, "read-only"), (errno.EIO, "write error")])
def test_status_names_the_kind_of_failure(code, kind):
    watch = DiskWatch(FOLDER, None, Probe())
    watch.fail(DiskError(FOLDER / "db.tmp", OSError(code, "why")), T0)
    assert watch.waiting == f"{kind}: data/server-3 (why); rejoining once it can write"


def test_a_deep_folder_still_fits_the_status_row_and_keeps_its_name():
    folder = Path("/" + "deep/" * 60 + "server-3")
    watch = DiskWatch(folder, None, Probe())
    watch.fail(full(), T0)
    assert len(watch.waiting) == WAITING_MAX
    assert watch.waiting.startswith("disk full: …") and "server-3 (No space" in watch.waiting


def test_probes_every_second_quietly_a_line_a_minute_then_restarts_once_writable():
    log, probe = TalkLog(), Probe()
    watch = DiskWatch(FOLDER, log, probe, probe_every=1.0, remind_every=60.0)
    watch.tick(T0)
    assert probe.calls == 0                              # not halted: nothing to probe
    assert watch.check() is probe.problem and probe.needed == [0]   # at start: any room
    probe.calls, probe.needed = 0, []
    watch.fail(DiskError(FOLDER / "wal-000002.jsonl",
                         OSError(errno.ENOSPC, "No space left on device"), needed=3_000_000), T0)
    log.lines.clear()
    now = T0
    while now < T0 + 59.5:
        now += 0.25
        watch.tick(now)
        assert watch.next_deadline() > now
    assert probe.calls == 59 and log.lines == [] and not watch.restart
    assert set(probe.needed) == {3_000_000}              # room for the write that failed
    now += 0.5
    watch.tick(now)                                      # a minute: one line
    assert probe.calls == 60 and log.lines == [
        "WARNING still halted: cannot write data/server-3/.write-probe: No space left on "
        "device; probing every 1 s"]
    probe.problem = None                                 # space freed
    watch.tick(now + 0.5)
    assert probe.calls == 60                             # not due yet
    watch.tick(now + 1.0)
    assert watch.restart and probe.calls == 61
    assert log.lines[-1] == "data/server-3 can be written again: restarting to rejoin"
    watch.tick(now + 5.0)
    assert probe.calls == 61 and watch.next_deadline() is None   # restarting: done


def test_probe_folder_writes_and_removes_its_file(tmp_path):
    assert probe_folder(tmp_path) is None
    assert list(tmp_path.iterdir()) == []
    too_much = probe_folder(tmp_path, needed=1 << 62)     # more room than any disk has
    assert too_much.errno == errno.ENOSPC and too_much.kind == "disk full"
    assert re.fullmatch(rf"cannot write {re.escape(str(tmp_path / PROBE_FILE))}: No space left "
                        rf"on device \(\d+ bytes free, {1 << 62} needed\)", str(too_much))
    assert list(tmp_path.iterdir()) == []
    problem = probe_folder(tmp_path / "missing")
    assert isinstance(problem, DiskError) and problem.errno == errno.ENOENT
    assert str(problem) == f"cannot write {tmp_path / 'missing'}: No such file or directory"
