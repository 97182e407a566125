"""How far apart the clocks are under packet loss (issue 13: "clock spread <= 5 ms right
after each round, even during 20% loss"), and what the broker's clock does meanwhile.

Run as root: ``python -m tests.loss_probe [--root DIR] [--loss 0.2] [--seconds 20]``.

The namespaces of ``tests/heal_probe.py`` (``sclk<pid>-*``): broker and servers 1-3,
every clock started true (no offset, no drift), so a server's clock minus the host's
is exactly the sum of the corrections it logged. Once all three serve, a coordinator
has logged a Berkeley round and the broker has set its clock by the coordinator's,
every server's namespace drops ``--loss`` of its packets both ways (iptables
``statistic``) for ``--seconds``; then the processes are stopped, so their logs are
complete. From the logs: the spread of the servers' clocks (max - min of those sums)
just before each round line of any coordinator after the loss began (every
correction of the round before has been applied by then); the rounds logged,
skipped, and readings discarded; the elections; the broker's corrections and its
largest. Everything it made is removed, also on error. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from common import log_lines as LL
from common.processes import wait_until
from tests.heal_probe import (HERE, PREFIX, SERVERS, Net, Processes, hold, log_lines, ns_name,
                              sh, start_cluster)

ADJUSTED = LL.pattern(LL.ADJUSTED)
CLOCK_SET = LL.pattern(LL.CLOCK_SET)


def settled(root: Path, folder: Path) -> bool:
    """Whether a coordinator has logged a Berkeley round and, if ``root``'s broker follows
    the coordinator's clock (``broker/clock_follow.py``), the broker has set its clock
    (its first correction, unbounded: it must not count as one made under the loss)."""
    rounds = any("| berkeley round" in line and "skipped" not in line
                 for sid in SERVERS for _, line in log_lines(folder, f"server-{sid}"))
    follows = (root / "broker" / "clock_follow.py").exists()
    return rounds and (not follows or any(CLOCK_SET.search(line)
                                          for _, line in log_lines(folder, "broker")))


def lossy(node: str, loss: float, on: bool) -> None:
    for chain in ("INPUT", "OUTPUT"):
        sh("ip", "netns", "exec", ns_name(node), "iptables", "-A" if on else "-D", chain,
           "-m", "statistic", "--mode", "random", "--probability", f"{loss}", "-j", "DROP")


def measure(root: Path, loss: float, seconds: float, keep: Path | None = None) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    net, procs = Net(), Processes(root, folder)
    try:
        net.build()
        start_cluster(folder, procs)
        wait_until(lambda: settled(root, folder), 30,
                   what="a Berkeley round (and the broker's clock set) before the fault")
        began = time.time()
        for sid in SERVERS:
            lossy(f"s{sid}", loss, True)
        hold(seconds)
        for sid in SERVERS:
            lossy(f"s{sid}", loss, False)
        ended = time.time()
        procs.stop()                    # every log complete: each process flushes it as it exits
        return summarize(folder, began, ended)
    finally:
        procs.stop()
        net.remove()
        if keep is not None:
            shutil.copytree(folder / "logs", keep / folder.name, dirs_exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)


def summarize(folder: Path, began: float, ended: float) -> dict:
    adjustments = {sid: [(t, float(m[1])) for t, line in log_lines(folder, f"server-{sid}")
                         if (m := ADJUSTED.search(line))] for sid in SERVERS}
    rounds, skipped, discarded, elections = [], 0, 0, 0
    for sid in SERVERS:
        for t, line in log_lines(folder, f"server-{sid}"):
            if not began <= t <= ended:
                continue
            if "| berkeley round" in line:
                if "skipped" in line:
                    skipped += 1
                else:
                    rounds.append(t)
                    if "discarded for round trips" in line:
                        discarded += line.rsplit(": ", 1)[1].count("ms")
            elif "| election called" in line:
                elections += 1
    spreads = []
    for t in sorted(rounds)[1:]:
        skews = [sum(d for at, d in adjustments[sid] if at < t - 0.001) for sid in SERVERS]
        spreads.append(max(skews) - min(skews))
    steps = [abs(float(m["step_ms"])) for t, line in log_lines(folder, "broker")
             if began <= t <= ended
             and (m := LL.parse(LL.CLOCK_SET, line) or LL.parse(LL.CLOCK_CORRECTED, line))]
    return {"rounds": len(rounds), "skipped": skipped, "discarded": discarded,
            "elections": elections, "spreads_ms": spreads,
            "broker_corrections": len(steps), "broker_largest_ms": max(steps, default=0.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=HERE, help="the checkout to run")
    parser.add_argument("--loss", type=float, default=0.2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--keep", type=Path, help="copy the logs here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("loss_probe needs root (network namespaces and iptables)")
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))   # finally blocks clean up
    got = measure(args.root.resolve(), args.loss, args.seconds, args.keep)
    spreads = got["spreads_ms"]
    print(f"{args.root.resolve()}: {args.loss:.0%} loss for {args.seconds:.0f} s: "
          f"{got['rounds']} rounds adjusted, {got['skipped']} skipped, {got['discarded']} "
          f"readings discarded, {got['elections']} elections called; clock spread before "
          f"each later round: max {max(spreads, default=float('nan')):.3f} ms, all "
          f"{', '.join(f'{s:.2f}' for s in spreads)}; broker: {got['broker_corrections']} "
          f"corrections, largest {got['broker_largest_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
