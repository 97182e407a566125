"""The benchmark behind ``python run_all.py bench``: where the system stands, in one run.

What it measures, in three fresh clusters (tmp folder, free ports, 127.0.0.1):

1. **Baseline**: broker + 3 echo servers (``clients/bench/echo.py``), 8 clients
   flat out: requests/s and the CPU time per request of broker and echo servers.
2. **Writes** (3 servers, 1,000 posts stored): acked posts/s with 8 clients (and
   the CPU time per acked post of broker and servers) and with 1, messages/s with
   8, latency percentiles, then p99 with the clients paced to half of the
   8-client rate. Then the same 8-client write load on a cluster whose servers run
   with ``--fsync`` (an ack waits for an fsync of the log on 3 servers, one fsync
   per loop turn: group commit), so both durability modes are measured in one run.
   Between them, the HTTP phase (issue 14, ``clients/bench/http.py``): the same posts
   through the web gateway, 8 HTTP clients flat out, then paced at half that rate.
3. **Replication lag**: a 4th server joins the same cluster (replicas stay 3, so an
   ack no longer means every server holds the write); each origin measures, from
   its peers' ACKs, when every server holds each of its writes, and the phase
   reads the difference of their lag histograms.
4. **Growth and reads** (3 servers, 100,000 posts stored): write rate, feed and
   chat rates and p99.
5. **Recovery** in the same cluster: a new server's catch-up time, the time from
   SIGKILL of the coordinator to a new one, and how long the killed server stays
   in the broker's pool.

Where: this module runs the benchmark and writes what it measured (the JSON, then
the table); the phases and their progress lines are ``clients/bench/phases.py``,
the table and the targets ``clients/bench/report.py``; the load comes from
``clients/bench/load.py``, the clusters and their stored posts from
``clients/bench/cluster.py``, the replication lag from the servers
(``servers/replication_lag.py``), the CPU time of the broker and servers from
``/proc`` (``clients/bench/cpu.py``).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from clients.bench.phases import FULL, QUICK, Bench
from clients.bench.report import print_table


def run_bench(quick: bool = False, out: Path = Path("bench.json"),
              stored: int | None = None) -> int:
    """Run every phase, print the table, write the JSON; 0 if every phase was measured.
    ``stored`` replaces the plan's large store (posts stored before growth and reads)."""
    plan = QUICK if quick else FULL
    if stored is not None:
        plan = replace(plan, stored_large=stored)
    root = Path(tempfile.mkdtemp(prefix="social-bench-"))
    began = time.monotonic()
    bench = Bench(plan, root)
    print(f"benchmark ({'quick' if quick else 'full'}): {plan.phase_s:g} s per phase, "
          f"{plan.clients} client processes, {os.cpu_count()} CPUs; clusters in {root}", flush=True)
    completed = False
    try:
        bench.run()
        completed = not bench.failures
    finally:
        figures = {**bench.figures,
                   "cpus": os.cpu_count(), "python": platform.python_version(),
                   "platform": platform.platform(),
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "quick": quick, "phase_s": plan.phase_s, "clients": plan.clients,
                   "stored_small": plan.stored_small, "stored_large": plan.stored_large,
                   "replicas": bench.config.replicas,
                   "durability": "servers run --no-fsync but in writes-fsync (the *_fsync "
                                 "figures), where they run --fsync",
                   "seconds": round(time.monotonic() - began, 1), "failures": bench.failures}
        Path(out).write_text(json.dumps(figures, indent=2) + "\n")
        if completed:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs kept in {root}/*/logs", flush=True)
    print()
    print_table(figures)
    print(f"\n{figures['seconds']} s; figures written to {out}"
          + (f"; {len(bench.failures)} phase(s) FAILED" if bench.failures else ""))
    return 1 if bench.failures else 0
