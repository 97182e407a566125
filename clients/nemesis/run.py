"""``python run_all.py nemesis``: build the namespaces, start the cluster and the users,
inject every fault in turn (held, healed, the time to full service measured), then
heal everything, read every server and check the history; one table, one JSON file,
exit code 0 when every "must be" holds.

The run folder (``logs/nemesis/run-<time>/``) keeps every process's log, the users'
history (``history.jsonl``), the status samples (``status.jsonl``) and the JSON;
the data folder is a temporary one, removed at the end. Whatever happens --
an error, Ctrl-C, SIGTERM -- every process started is stopped by pid and every
namespace, link and rule created is removed.
"""
from __future__ import annotations

import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path

import orjson

from clients.connection import ClientError, Connection
from clients.nemesis import faults as F
from clients.nemesis import history as H
from clients.nemesis.cluster import NemesisCluster
from clients.nemesis.monitor import Monitor
from clients.nemesis.topology import Topology, TopologyError, prerequisites_missing, \
    remove_leftovers
from clients.nemesis.workload import PASSWORD, REQUEST_DEADLINE
from common import protocol as P
from common.clock import LamportClock, PhysicalClock
from common.processes import ROOT, wait_until

USERS = ["ann", "bob", "cat", "dan"]


@dataclass(frozen=True)
class Plan:
    hold_s: float             # seconds each fault is held
    baseline_s: float         # load before the first fault
    recovery_s: float         # deadline for full service after a heal
    agree_s: float            # deadline for the servers to agree on a coordinator
    settle_s: float           # deadline for equal digests at the end
    start_s: float = 60.0     # deadline for the cluster to serve at start


def make_plan(quick: bool, seconds: float | None) -> Plan:
    if quick:       # however broken the cluster, the run ends in about 3 minutes
        return Plan(hold_s=seconds or 5.0, baseline_s=2.0, recovery_s=15.0, agree_s=10.0,
                    settle_s=30.0)
    return Plan(hold_s=seconds or 20.0, baseline_s=5.0, recovery_s=40.0, agree_s=30.0,
                settle_s=60.0)


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum, _frame) -> None:
    raise Interrupted(signum)


def say(text: str, start: float) -> None:
    print(f"[{time.time() - start:6.1f}s] {text}", flush=True)


class HistoryTail:
    """The users' history file, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict] = []
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict]:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
            self._offset += len(chunk)
            lines = (self._partial + chunk).split(b"\n")
            self._partial = lines.pop()
            self.records.extend(orjson.loads(line) for line in lines if line.strip())
        return self.records


class Nemesis:
    def __init__(self, servers: int, kinds: list[str], quick: bool, plan: Plan,
                 run_dir: Path, data_dir: Path) -> None:
        self.ids = list(range(1, servers + 1))
        self.kinds, self.quick, self.plan = kinds, quick, plan
        self.run_dir, self.data_dir = run_dir, data_dir
        self.topology = Topology(servers)
        self.cluster: NemesisCluster | None = None
        self.monitor: Monitor | None = None
        self.tail = HistoryTail(run_dir / "history.jsonl")
        self.majority = servers // 2 + 1
        self.full_copies = 0
        self.start = time.time()
        self.faults: list[dict] = []
        self.paused: list[tuple[int, float, float]] = []     # (server, from, to)
        self.agreed_at = float("inf")      # when the servers first agreed on a coordinator

    def say(self, text: str) -> None:
        say(text, self.start)

    # --- the run ----------------------------------------------------------------------------
    def setup(self) -> None:
        t = self.topology.create()
        self.say(f"namespaces {t.prefix}{{b,u,s1..s{len(self.ids)}}} on bridge {t.bridge}, "
                 f"10.213.{t.subnet}.0/24 (broker {t.broker_address}, servers "
                 f"{t.server_address(1)}..{t.server_address(len(self.ids))}, users "
                 f"{t.address('u')})")
        self.cluster = NemesisCluster(t, self.data_dir, self.run_dir)
        self.full_copies = min(len(self.ids), self.cluster.config.replicas)
        self.cluster.start_broker()
        for sid in self.ids:
            self.cluster.start_server(sid)
        self.monitor = Monitor(self.cluster.config, self.run_dir / "status.jsonl").start()
        self.monitor.wait_serving(self.ids, self.plan.start_s, since=self.start)
        coordinator = self.coordinator()
        self.agreed_at = time.time()
        self.say(f"servers {self.ids} serving; coordinator {coordinator}")
        faults = len(F.plan(self.kinds, self.quick))
        expected = self.plan.baseline_s + faults * (self.plan.hold_s + 8)
        budget = self.plan.baseline_s + 30 + faults * (self.plan.hold_s + self.plan.recovery_s
                                                       + self.plan.agree_s)
        # bounded in time (the longest the faults can take) and in count: a user writes
        # at most ~6/s (it pauses 0.1 s on average), so this cap bites only past the end
        max_writes = int(100 + 10 * expected)
        self.cluster.start_workload(self.tail.path, USERS, budget, max_writes,
                                    seed=int(self.start))
        wait_until(lambda: {r["user"] for r in self.tail.read() if r["op"] == "ready"}
                   >= set(USERS) or self._workload_crashed(), 60, what="the users logged in")
        if self._workload_crashed():
            said = self.cluster.stderr_since_start("workload").strip().splitlines()
            crashed = [r["error"] for r in self.tail.records if r["op"] == "crashed"]
            raise RuntimeError(f"the users' workload failed: {(crashed or said or ['?'])[-1]}")
        self.say(f"users {', '.join(USERS)} writing and reading (history in "
                 f"{self.tail.path})")
        F.hold(self.plan.baseline_s)

    def _workload_crashed(self) -> bool:
        return not self.cluster.alive("workload") or \
            any(r["op"] == "crashed" for r in self.tail.read())

    def inject_all(self) -> None:
        for fault in F.plan(self.kinds, self.quick):
            coordinator = self.coordinator()
            target = F.Target(self.topology, self.cluster, coordinator, self.ids)
            injected = time.time()
            what = fault.inject(target)
            self.say(f"{fault.label}: {what}; held {self.plan.hold_s:g} s")
            F.hold(self.plan.hold_s)
            healed = time.time()
            how = fault.heal(target)
            full = self.full_service(healed)
            self.say(f"{fault.label}: healed ({how}); full service "
                     + (f"after {full:.2f} s" if full is not None
                        else f"not back within {self.plan.recovery_s:g} s"))
            self.faults.append({"label": fault.label, "kind": fault.kind, "what": what,
                                "healed_how": how, "injected": injected, "healed": healed,
                                "full_service_s": full})
            if fault.kind == "pause":
                self.paused.append((target.victim, injected, healed))

    def coordinator(self) -> int:
        """The coordinator every server agrees on; failing that, the one most fresh rows
        name (the faults still run: what the servers do then is what is measured)."""
        try:
            return self.monitor.coordinator(self.ids, self.plan.agree_s)
        except TimeoutError:
            rows = self.monitor.fresh(time.time() - 1.0)
            named = [r["coordinator"] for r in rows.values() if r["coordinator"] in self.ids]
            pick = max(set(named), key=named.count) if named else max(self.ids)
            self.say(f"no coordinator agreed on within {self.plan.agree_s:g} s; "
                     f"taking server {pick}")
            return pick

    def full_service(self, healed: float) -> float | None:
        """Seconds from ``healed`` until every server serves (fresh rows) and a write
        sent after the heal is acked with every copy; None past the deadline."""
        serving_at = None

        def back():
            nonlocal serving_at
            if serving_at is None and self.monitor.serving(self.ids, healed):
                serving_at = time.time()
            acks = [r["replied"] for r in self.tail.read() if r["op"] in H.WRITE_OPS
                    and r.get("ok") and r["sent"] >= healed
                    and (r.get("replicas") or 0) >= self.full_copies]
            return serving_at is not None and acks and max(serving_at, min(acks)) - healed
        try:
            return wait_until(back, self.plan.recovery_s, interval=0.05, what="full service")
        except TimeoutError:
            return None

    def finish_load(self) -> None:
        self.cluster.terminate("workload", timeout=4 * REQUEST_DEADLINE + 10)
        records = self.tail.read()
        self.say(f"users stopped: {len(records)} records")

    def settle(self) -> dict[int, H.Holdings]:
        """Everything healed and running, converged; then every server read, pinned."""
        self.topology.heal_all()
        for sid in self.ids:
            name = f"server-{sid}"
            if name in self.cluster.paused:
                self.cluster.resume(name)
            if not self.cluster.alive(name):
                self.cluster.start_server(sid)
        try:
            self.monitor.wait_converged(self.ids, self.plan.settle_s)
            self.say("every server serving with the same digest")
        except TimeoutError as exc:
            self.say(f"not converged: {exc}; reading each server anyway")
        return {sid: h for sid in self.ids if (h := self.read_server(sid)) is not None}

    def read_server(self, sid: int) -> H.Holdings | None:
        deadline = time.time() + 30
        while True:
            try:
                return read_holdings(self.cluster.config, sid)
            except ClientError as exc:
                if time.time() >= deadline:
                    self.say(f"server {sid} could not be read: {exc.code}: {exc.message}")
                    return None
                time.sleep(0.2)          # it is not serving yet: ask again

    def claims(self) -> list[H.Claim]:
        return [c for sid in self.ids
                for c in H.claims_in_log(sid, self.cluster.log_text(f"server-{sid}"))]

    def crossed(self) -> list[dict]:
        return [c for sid in self.ids
                for c in H.crossed_retries(sid, self.cluster.log_text(f"server-{sid}"))]

    def spans(self) -> list[H.Span]:
        return [span for sid in self.ids for span in H.coordinator_spans(
            sid, self.cluster.log_text(f"server-{sid}"),
            [(start, end) for who, start, end in self.paused if who == sid])]


def read_holdings(config, sid: int) -> H.Holdings:
    """Every post, chat and follow as server ``sid`` answers it, pinned (reads as each
    user, each with a session of its own)."""
    conns = {}
    try:
        for user in USERS:
            conn = Connection(config, user, LamportClock(), PhysicalClock())
            conns[user] = conn
            token = secrets.token_urlsafe(32)
            conn.request(P.OP_LOGIN, {"password": PASSWORD}, token=token)
            conn.token = token

        def pinned(user, op, args):
            result = conns[user].request(op, args, sid)
            if result["server"] != sid:
                raise ClientError(P.ERR_INTERNAL, f"pinned to {sid}, answered by {result['server']}")
            return result
        def held(item: dict) -> dict:      # the copy it holds: its stamp and time
            return {"id": item["id"], "text": item["text"], "lamport": item.get("lamport"),
                    "ts": item.get("timestamp")}
        posts = [held(p) for p in pinned(USERS[0], P.OP_FEED, {"limit": P.MAX_LIMIT})["posts"]]
        chats = {(a, b): [held(m) for m in
                          pinned(a, P.OP_CHAT, {"with": b, "limit": P.MAX_LIMIT})["messages"]]
                 for a, b in combinations(USERS, 2)}
        following = {u: list(pinned(u, P.OP_FOLLOWING, {})["following"]) for u in USERS}
        return H.Holdings(posts, chats, following)
    finally:
        for conn in conns.values():
            conn.close()


# --- the table ---------------------------------------------------------------------------------
ROWS = [("writes_acknowledged", "writes acknowledged", ""),
        ("minority_acks", "acks with fewer than a majority of copies", "0"),
        ("acked_writes_lost", "acked writes lost", "0"),
        ("requests_stored_twice", "requests stored twice", "0"),
        ("stale_reads", "stale reads (missing a write acked >= 0.5 s before)", "0"),
        ("epochs_with_two_coordinators", "epochs with two coordinators", "0"),
        ("clock_spread_after_round_ms", "clock spread after each round (ms, max)", "<= 5 ms"),
        ("replies_naming_a_copy_not_kept", "replies naming a copy that is not kept", "0"),
        ("new_epochs", "new epochs (elections won)", "<= bound"),
        ("retried_writes", "retried writes (acked after > 1 try)", "reported"),
        ("retries_onto_another_servers_copy", "  of which onto another server's copy", "reported"),
        ("heal_to_full_service_s", "time from heal to full service (s)", "reported")]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def table(overall: dict, per_fault: list[dict], recovery_s: float) -> str:
    """One row per figure; a column for the whole run, then one per fault. A fault
    whose cluster did not come back shows ``> recovery_s`` for its time to service;
    new epochs show their bound (``1 (<= 2)``) and ``FAIL`` past it."""
    def cell(key, value, labels):
        if key == "heal_to_full_service_s" and value is None and per_fault:
            return f"> {recovery_s:g}"
        if key == "new_epochs":
            bound = H.epoch_limit(labels)
            return f"{value} (<= {bound})" + (" FAIL" if value > bound else "")
        return _cell(value)
    headers = ["figure", "must be", "all", *(f["label"] for f in per_fault)]
    everything = [f["label"] for f in per_fault]
    lines = [[name, must, cell(key, overall[key], everything),
              *(cell(key, f["figures"][key], [f["label"]]) for f in per_fault)]
             for key, name, must in ROWS]
    widths = [max(len(row[i]) for row in [headers, *lines]) for i in range(len(headers))]

    def fmt(row):
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |"
    return "\n".join([fmt(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(fmt, lines)])


def report(n: Nemesis, findings: H.Findings, holdings: dict, json_path: Path,
           duration: float) -> int:
    ends = [f["injected"] for f in n.faults[1:]] + [float("inf")]
    windows = [H.Window(f["label"], float("-inf") if i == 0 else f["injected"], end)
               for i, (f, end) in enumerate(zip(n.faults, ends))]
    overall = H.figures(findings)
    fulls = [f["full_service_s"] for f in n.faults]
    overall["heal_to_full_service_s"] = None if None in fulls or not fulls else max(fulls)
    per_fault = []
    for fault, window in zip(n.faults, windows):
        figs = H.figures(findings, window)
        figs["heal_to_full_service_s"] = fault["full_service_s"]
        per_fault.append({**fault, "figures": figs})
    failed = H.failed(overall, [f["label"] for f in per_fault]) + [
        f"{name} ({f['label']})" for f in per_fault
        for name in H.failed(f["figures"], [f["label"]]) if name == "new_epochs"]
    problems = []
    if overall["writes_acknowledged"] == 0:
        problems.append("no write was acknowledged")
    if set(holdings) != set(n.ids):
        problems.append(f"servers {sorted(set(n.ids) - set(holdings))} could not be read at the end")
    crashed = [r for r in n.tail.records if r["op"] == "crashed"]
    if crashed:
        problems.append(f"{len(crashed)} users' threads crashed: {crashed[0]['error']}")
    verdict = "pass" if not failed and not problems else "fail"
    print()
    print(table(overall, per_fault, n.plan.recovery_s))
    print()
    if len(n.faults) > 0:
        print("faults: " + "; ".join(f"{f['label']}: {f['what']}" for f in n.faults))
    print(f"majority {n.majority} of {len(n.ids)} servers; {findings.unchecked_reads} reads "
          f"unchecked (at the read limit); {overall['rounds_measured']} Berkeley rounds measured")
    for problem in problems:
        print(f"problem: {problem}")
    print(f"verdict: {verdict.upper()}" + (f" (failed: {', '.join(failed)})" if failed else "")
          + f"; {duration:.0f} s; details in {json_path}")
    document = {
        "verdict": verdict, "failed": failed, "problems": problems,
        "figures": overall,
        "must_be": {**{k: must for k, (must, _) in H.MUST_BE.items()},
                    "new_epochs": {label: H.epoch_limit([label]) for label in
                                   [f["label"] for f in per_fault]}},
        "faults": per_fault,
        "run": {"servers": len(n.ids), "majority": n.majority, "quick": n.quick,
                "hold_s": n.plan.hold_s, "kinds": n.kinds, "duration_s": round(duration, 1),
                "folder": str(n.run_dir), "users": USERS,
                "requests": sum(r["op"] not in ("ready", "stopped") for r in n.tail.records),
                "unchecked_reads": findings.unchecked_reads},
        "details": {"minority_acks": findings.minority[:50], "lost": findings.lost[:50],
                    "stored_twice": findings.twice[:50], "stale_reads": findings.stale[:50],
                    "two_coordinators": findings.split, "rounds": findings.rounds,
                    "replies_naming_a_copy_not_kept": findings.wrong_copy[:50],
                    "new_epochs": findings.epochs,
                    "retried_writes": [{k: w.get(k) for k in ("rid", "op", "user", "sent",
                                                              "replied", "tries", "server")}
                                       for w in findings.retried[:50]],
                    "retries_onto_another_servers_copy": findings.crossed[:50]},
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(document, indent=2, default=str))
    return 0 if verdict == "pass" else 1


# --- the entry point -----------------------------------------------------------------------
def run_nemesis(quick: bool, kinds: list[str], seconds: float | None, servers: int,
                json_out: str | None) -> int:
    why = prerequisites_missing()
    if why:
        print(why)
        return 2
    unknown = sorted(set(kinds) - set(F.KINDS))
    if unknown:
        print(f"unknown faults {', '.join(unknown)}: choose from {', '.join(F.KINDS)}")
        return 2
    for line in remove_leftovers():
        print(line)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = ROOT / "logs" / "nemesis" / f"run-{stamp}-{Topology(servers).pid}"
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="nemesis-data-"))
    json_path = Path(json_out) if json_out else run_dir / "nemesis.json"
    n = Nemesis(servers, kinds, quick, make_plan(quick, seconds), run_dir, data_dir)
    previous = {s: signal.signal(s, _raise) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 1
    try:
        n.say(f"nemesis: {servers} servers, faults {', '.join(kinds)}, "
              f"{'quick' if quick else 'full'} (each held {n.plan.hold_s:g} s); folder {run_dir}")
        n.setup()
        n.inject_all()
        n.finish_load()
        holdings = n.settle()
        findings = H.check(n.tail.read(), holdings, n.majority, n.claims(), n.spans(),
                           n.monitor.samples, n.monitor.history(),
                           fresh_s=2 * n.cluster.config.heartbeat_interval + 0.25,
                           since=n.agreed_at, crossed=n.crossed())
        code = report(n, findings, holdings, json_path, time.time() - n.start)
    except Interrupted as exc:
        print(f"interrupted by {exc}: cleaning up", flush=True)
        code = 128 + exc.signum
    except (TopologyError, TimeoutError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)       # a second Ctrl-C must not stop the cleanup
        cleanup(n, data_dir)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code


def cleanup(n: Nemesis, data_dir: Path) -> None:
    if n.monitor is not None:
        n.monitor.stop()
    if n.cluster is not None:
        n.cluster.stop_all()
    problems = n.topology.remove()
    for problem in problems:
        print(f"cleanup: could not remove {problem}", file=sys.stderr)
    shutil.rmtree(data_dir, ignore_errors=True)
