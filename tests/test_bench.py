"""The benchmark runs end to end in CI mode and reports every figure (no thresholds:
machines are noisy; the figures are for people, not for asserts)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

from common.processes import ROOT

REQUIRED = ["baseline_rps", "posts_per_s", "ratio", "p50_ms", "p99_ms", "p99_half_load_ms",
            "growth_ratio", "feed_rps", "feed_p99_ms", "chat_rps", "chat_p99_ms",
            "catchup_s", "failover_s", "pool_residency_s", "cpus",
            "baseline_cpu_us_per_req", "cpu_us_per_post", "posts_per_s_fsync", "p99_ms_fsync"]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_quick_bench_writes_every_figure(tmp_path):
    out = tmp_path / "b.json"
    done = subprocess.run([sys.executable, "run_all.py", "bench", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, f"bench exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    figures = json.loads(out.read_text())
    missing = [key for key in REQUIRED if not _is_number(figures.get(key))]
    assert not missing, f"not numbers: {missing}\n{done.stdout}"
    lag = figures.get("replication_lag_ms")
    assert isinstance(lag, dict) and all(_is_number(lag.get(q)) for q in ("p50", "p99")), lag
    assert figures["failures"] == []
    for key, names in [("baseline_cpu_us_per_req", ["broker", "echo-1", "echo-2", "echo-3"]),
                       ("cpu_us_per_post", ["broker", "server-1", "server-2", "server-3"])]:
        split = figures[f"{key}_by_process"]             # CPU from /proc, by process
        assert list(split) == names and all(_is_number(us) for us in split.values()), split
        assert figures[key] > 0 and math.isclose(figures[key], sum(split.values())), figures[key]
    assert figures["python"] and figures["date"]
    assert "posts/s" in done.stdout            # the progress lines and the table are printed
    assert "CPU per acked post" in done.stdout
    assert "writes with --fsync" in done.stdout and "acked posts, 8 clients, --fsync" in done.stdout
