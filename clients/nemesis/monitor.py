"""The broker's status, sampled every ``INTERVAL`` from the host's address on the bridge.

A status row is what a server last said in its heartbeat; the broker keeps showing
it until the server goes silent for ``server_timeout``. So the monitor keeps, per
server, every *distinct* row (its Lamport clock changes with every heartbeat; a
restarted server starts it again) and when it first saw it: a row is fresh when
it was first seen recently. Every sample also goes to ``status.jsonl`` in the run
folder, for people and for the checker.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import orjson

from clients.connection import ClientError, Connection
from common import protocol as P
from common.clock import LamportClock, PhysicalClock
from common.config import Config
from common.processes import wait_until

INTERVAL = 0.05
KEPT = ("alive", "phase", "coordinator", "epoch", "clock_skew_ms", "clock_offset_ms",
        "last_sync", "lamport", "digest", "events")


@dataclasses.dataclass(frozen=True)
class Row:
    seen: float          # host time of the first sample that showed it
    data: dict


class Monitor:
    def __init__(self, config: Config, path: Path) -> None:
        self.config = dataclasses.replace(config, request_timeout=0.5, request_deadline=1.0)
        self.path = path
        self.rows: dict[int, list[Row]] = {}
        self.samples: list[dict] = []
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def start(self) -> "Monitor":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        conn = Connection(self.config, None, LamportClock(), PhysicalClock())
        with open(self.path, "ab") as out:
            try:
                while not self._stop.is_set():
                    self._sample(conn, out)
                    self._stop.wait(INTERVAL)
            finally:
                conn.close()

    def _sample(self, conn: Connection, out) -> None:
        try:
            status = conn.request(P.OP_STATUS, {})
        except ClientError:
            with self._lock:
                self.failures += 1
            return
        now = time.time()
        rows = {row["id"]: {k: row.get(k) for k in KEPT} for row in status["servers"]
                if "lamport" in row}
        sample = {"t": now, "rows": rows}
        with self._lock:
            self.samples.append(sample)
            for sid, row in rows.items():
                kept = self.rows.setdefault(sid, [])
                if not kept or kept[-1].data["lamport"] != row["lamport"]:
                    kept.append(Row(now, row))
        out.write(orjson.dumps(sample, option=orjson.OPT_NON_STR_KEYS) + b"\n")
        out.flush()

    # --- what the run asks -------------------------------------------------------------
    def fresh(self, since: float) -> dict[int, dict]:
        """Each server's latest row, if it was first seen after ``since``."""
        with self._lock:
            return {sid: rows[-1].data for sid, rows in self.rows.items()
                    if rows and rows[-1].seen > since}

    def serving(self, ids, since: float) -> dict[int, dict] | None:
        """Rows first seen after ``since`` of every server in ``ids``, each alive and
        serving; None unless all are."""
        rows = self.fresh(since)
        ok = {sid: r for sid, r in rows.items() if sid in ids and r["alive"]
              and r["phase"] == "serving"}
        return ok if set(ok) == set(ids) else None

    def wait_serving(self, ids, timeout: float, since: float | None = None) -> dict[int, dict]:
        """``serving`` rows (sent after ``since``, by default now), waited for."""
        since = time.time() if since is None else since
        return wait_until(lambda: self.serving(ids, since), timeout, interval=INTERVAL,
                          what=f"servers {sorted(ids)} serving")

    def coordinator(self, ids, timeout: float) -> int:
        """The coordinator fresh rows of every server in ``ids`` agree on."""
        def agreed():
            rows = self.fresh(time.time() - 2 * self.config.heartbeat_interval - 0.2)
            views = {(r["coordinator"], r["epoch"]) for sid, r in rows.items()
                     if sid in ids and r["alive"] and r["phase"] == "serving"}
            if len(views) == 1 and len(rows) >= len(ids):
                (who, _epoch), = views
                return who
            return None
        return wait_until(agreed, timeout, interval=INTERVAL, what="one coordinator agreed")

    def wait_converged(self, ids, timeout: float) -> dict[int, dict]:
        """Fresh rows of every server in ``ids``, serving, with one digest and count."""
        since = time.time()

        def converged():
            rows = {sid: r for sid, r in self.fresh(since).items() if sid in ids}
            if set(rows) != set(ids) or any(not r["alive"] or r["phase"] != "serving"
                                            for r in rows.values()):
                return None
            return rows if len({(r["digest"], r["events"]) for r in rows.values()}) == 1 else None
        return wait_until(converged, timeout, interval=INTERVAL, what="equal digests")

    def history(self) -> dict[int, list[Row]]:
        with self._lock:
            return {sid: list(rows) for sid, rows in self.rows.items()}
