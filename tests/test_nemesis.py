"""Issue 13, "a nemesis anyone can run": ``python run_all.py nemesis``.

The real run (root only: namespaces and iptables) is ``--quick`` as a subprocess:
every must-be of its JSON holds, writes were acked, and nothing with its prefix
(namespace, link, host rule) is left afterwards. The checker is tested without
root on synthetic histories, one for each thing it must find, and so is the
one-line refusal when not root.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from clients.nemesis import history as H
from clients.nemesis.topology import prefix_of, traces
from common.processes import ROOT

MAJORITY = 2


def write(op, user, t, replicas=3, ok=True, **fields):
    """A write record as the workload writes it: sent at ``t``, acked 0.01 s later."""
    record = {"user": user, "op": op, "rid": fields.get("id", f"r{t}"), "sent": t,
              "replied": t + 0.01, "ok": ok, "replicas": replicas, "server": 1,
              "pinned": None, **fields}
    return record


def read(op, user, t, seen, **fields):
    return {"user": user, "op": op, "rid": f"q{t}", "sent": t, "replied": t + 0.01,
            "ok": True, "replicas": None, "server": 2, "pinned": None, "seen": seen, **fields}


def post(t, pid, user="ann", **kw):
    return write("post", user, t, id=pid, text=f"{user} post {pid}", **kw)


def holding(posts=(), chats=None, following=None) -> H.Holdings:
    return H.Holdings([{"id": p, "text": f"ann post {p}"} for p in posts], chats or {},
                      following or {})


# --- the checker ------------------------------------------------------------------------------
def test_a_read_missing_a_write_acked_half_a_second_before_is_stale():
    records = [post(10.0, "p1"), post(10.3, "p2"),
               read("feed", "bob", 10.6, ["p2"]),          # p1 acked 0.59 s before: stale
               read("feed", "bob", 10.7, ["p1"]),          # p2 acked 0.39 s before: not yet due
               read("feed", "bob", 11.0, ["p1", "p2"])]
    stale, unchecked = H.stale_reads(records)
    assert [(s["rid"], s["missing"]) for s in stale] == [("q10.6", 1)]
    assert unchecked == 0


def test_chats_and_follows_are_checked_too_and_a_full_feed_is_not():
    records = [write("dm", "ann", 1.0, id="m1", to="bob", text="ann to bob 0"),
               write("follow", "ann", 1.0, id="f1", target="cat"),
               post(1.0, "p1"),
               read("chat", "bob", 2.0, [], **{"with": "ann"}),     # misses m1
               read("chat", "cat", 2.0, [], **{"with": "ann"}),     # another pair: fine
               read("following", "ann", 2.0, []),                   # misses cat
               read("feed", "bob", 2.0, [f"x{i}" for i in range(H.READ_LIMIT)]),
               read("chat", "bob", 2.0, [f"y{i}" for i in range(H.READ_LIMIT)], **{"with": "ann"})]
    stale, unchecked = H.stale_reads(records)
    assert sorted(s["op"] for s in stale) == ["chat", "following"]
    assert unchecked == 2


def test_an_acked_write_missing_from_one_server_is_lost():
    records = [post(1.0, "p1"), post(2.0, "p2"), post(3.0, "p3", ok=False)]
    acked = H.acked_writes(records)
    lost = H.lost_writes(acked, {1: holding(["p1", "p2"]), 2: holding(["p1"]),
                                 3: holding(["p1", "p2"])})
    assert [(w["id"], w["missing_on"]) for w in lost] == [("p2", [2])]
    follows = [write("follow", "ann", 1.0, id="f", target="bob")]
    assert H.lost_writes(follows, {1: holding(following={"ann": ["bob"]}),
                                   2: holding(following={"ann": []})})[0]["missing_on"] == [2]


def test_a_request_stored_twice_is_found_by_id_by_text_and_in_reads():
    records = [post(1.0, "p1"), post(2.0, "p2")]
    assert H.stored_twice(records, {1: holding(["p1", "p2"])}) == []
    twice_by_id = H.stored_twice(records, {1: holding(["p1", "p1", "p2"])})
    assert [d["what"] for d in twice_by_id] == ["ann post p1"]       # one entry, not two
    by_text = H.Holdings([{"id": "p2", "text": "ann post p2"},
                          {"id": "zz", "text": "ann post p2"}], {}, {})
    assert [d["what"] for d in H.stored_twice(records, {2: by_text})] == ["ann post p2"]
    in_a_read = records + [read("feed", "bob", 3.0, ["p2", "p1", "p2"])]
    assert [d["copies"] for d in H.stored_twice(in_a_read, {1: holding(["p1", "p2"])})] == [2]


def test_an_ack_with_fewer_than_a_majority_of_copies_is_counted():
    acked = H.acked_writes([post(1.0, "a", replicas=3), post(2.0, "b", replicas=2),
                            post(3.0, "c", replicas=1)])
    assert [w["id"] for w in H.minority_acks(acked, MAJORITY)] == ["c"]
    assert [w["id"] for w in H.minority_acks(acked, 3)] == ["b", "c"]


def log(server: int, *lines: tuple[str, str]) -> str:
    """Log lines of ``server``: (HH:MM:SS.ffffff, what)."""
    return "\n".join(f"2026-12-02 01:00:{t} | L=1 | server-{server} | local - | {what}"
                     for t, what in lines)


def spans(*texts_by_server, paused=()):
    return [s for sid, text in texts_by_server for s in H.coordinator_spans(sid, text, paused)]


def test_two_coordinators_at_once_by_their_logs_count_once_per_epoch():
    s3 = log(3, ("01.000000", "started: 0 events"), ("02.000000", "I am coordinator (epoch 103)"),
             ("20.000000", "phase serving"))
    isolated = log(1, ("01.000000", "started: 0 events"),
                   ("05.000000", "coordinator is now s3 (epoch 103)"),
                   ("08.000000", "I am coordinator (epoch 201)"),
                   ("11.000000", "coordinator is now s3 (epoch 303)"))
    found = H.two_coordinators([], spans((3, s3), (1, isolated)), [], fresh_s=0.75)
    assert [(f["epoch"], f["servers"]) for f in found] == [(201, [1, 3])]
    assert found[0]["seconds"] == pytest.approx(3.0)


def test_a_prompt_handover_a_dead_coordinator_and_a_paused_one_are_no_split():
    old = log(2, ("01.000000", "I am coordinator (epoch 102)"),
              ("05.050000", "coordinator is now s3 (epoch 203)"))
    new = log(3, ("05.000000", "I am coordinator (epoch 203)"), ("30.000000", "x"))
    assert H.two_coordinators([], spans((2, old), (3, new)), [], 0.75) == []
    killed = log(2, ("01.000000", "I am coordinator (epoch 102)"), ("04.000000", "last words"),
                 ("10.000000", "started: 7 events"), ("10.500000", "coordinator is now s1 (epoch 301)"))
    other = log(1, ("06.000000", "I am coordinator (epoch 301)"), ("30.000000", "x"))
    assert H.two_coordinators([], spans((2, killed), (1, other)), [], 0.75) == []
    # a restart's first line is its Lamport start, before "started:": it ends the old life
    restarted = log(2, ("01.000000", "I am coordinator (epoch 102)"), ("04.000000", "last words"),
                    ("10.000000", "lamport clock starts at L=4007 (stored ceiling 4007, …)"),
                    ("10.100000", "started: 7 events"),
                    ("10.500000", "coordinator is now s1 (epoch 301)"))
    assert H.two_coordinators([], spans((2, restarted), (1, other)), [], 0.75) == []
    frozen = log(3, ("01.000000", "I am coordinator (epoch 103)"),
                 ("20.100000", "coordinator is now s2 (epoch 202)"))
    taken = log(2, ("10.000000", "I am coordinator (epoch 202)"), ("30.000000", "x"))
    t = H.log_time("2026-12-02 01:00:05.000000")
    paused = [(t, t + 15.0)]                    # 01:00:05 to 01:00:20: SIGSTOP, SIGCONT
    assert H.two_coordinators([], spans((3, frozen), paused=paused) + spans((2, taken)),
                              [], 0.75) == []
    assert len(H.two_coordinators([], spans((3, frozen), (2, taken)), [], 0.75)) == 1
    stepped = log(3, ("01.000000", "I am coordinator (epoch 103)"),
                  ("06.000000", "stepping down: no majority of the members heard for 1.2 s "
                                "(epoch 103)"), ("20.000000", "x"))
    assert H.two_coordinators([], spans((3, stepped), (2, taken)), [], 0.75) == []
    # leaving serving is no step-down: cut off from the bus, it still coordinates
    cut_off = log(3, ("01.000000", "I am coordinator (epoch 103)"),
                  ("06.000000", "phase serving -> joining: the bus is silent"),
                  ("20.000000", "x"))
    assert len(H.two_coordinators([], spans((3, cut_off), (2, taken)), [], 0.75)) == 1


def test_one_epoch_claimed_by_two_servers_is_a_split():
    claims = [H.Claim(1, 7, 1.0), H.Claim(1, 7, 5.0), H.Claim(2, 8, 6.0)]
    assert H.two_coordinators(claims, [], [], 0.75) == []
    found = H.two_coordinators(claims + [H.Claim(3, 7, 9.0)], [], [], 0.75)
    assert [(f["epoch"], f["servers"]) for f in found] == [(7, [1, 3])]


def sample(t, rows):
    return {"t": t, "rows": {sid: {"alive": True, "phase": "serving", "coordinator": c,
                                   "epoch": e, "lamport": lam} for sid, (c, e, lam) in rows.items()}}


def test_two_serving_servers_calling_themselves_coordinator_in_status_rows_is_a_split():
    both = [sample(10 + k * 0.1, {1: (1, 5, 100 + k), 3: (3, 6, 200 + k)}) for k in range(20)]
    found = H.two_coordinators([], [], both, fresh_s=0.75)
    assert [(f["epoch"], f["servers"]) for f in found] == [(6, [1, 3])]
    # a row that stops changing (a dead server's, kept by the broker) is not fresh
    dead = [sample(10 + k * 0.1, {1: (1, 5, 100), 3: (3, 6, 200 + k)}) for k in range(20)]
    assert H.two_coordinators([], [], dead, fresh_s=0.75) == []
    # both for a moment only (a handover seen through heartbeats in flight)
    moment = both[:5] + [sample(10.5 + k * 0.1, {1: (3, 6, 300 + k), 3: (3, 6, 400 + k)})
                         for k in range(10)]
    assert H.two_coordinators([], [], moment, fresh_s=0.75) == []


def row(seen, skew, last_sync, phase="serving"):
    return H.Row(seen, {"alive": True, "phase": phase, "clock_skew_ms": skew,
                        "last_sync": last_sync, "lamport": int(seen * 10)})


def test_the_clock_spread_right_after_a_round_is_measured():
    rows = {1: [row(9.0, 40.0, 5.0), row(10.1, 0.5, 10.0)],
            2: [row(9.0, -20.0, 5.0), row(10.1, -0.4, 10.0)],
            3: [row(9.0, 9.0, 5.0), row(10.1, 7.0, 10.0)],          # 7 ms off after the round
            4: [row(9.0, 900.0, None, phase="syncing")],           # not serving: not counted
            5: [row(9.9, 300.0, 5.0)],              # its last row before the round: dead
            6: [row(9.0, 1.0, 5.0), row(10.3, 2.0, 5.0)]}          # missed the round: counted
    rounds = H.clock_rounds(rows, fresh_s=0.75)
    assert len(rounds) == 1 and rounds[0]["spread_ms"] == pytest.approx(7.4)
    assert sorted(rounds[0]["skews"]) == [1, 2, 3, 6]
    figs = H.figures(H.Findings(rounds=rounds))
    assert "clock_spread_after_round_ms" in H.failed(figs)
    assert H.failed(H.figures(H.Findings(rounds=[{**rounds[0], "spread_ms": 4.9}]))) == []


def test_figures_per_fault_take_what_happened_in_its_window():
    f = H.Findings(acked=H.acked_writes([post(1.0, "a"), post(5.0, "b", replicas=1)]))
    f.minority = H.minority_acks(f.acked, MAJORITY)
    f.rounds = [{"t": 1.0, "spread_ms": 1.0}]
    first, second = H.Window("one", float("-inf"), 4.0), H.Window("two", 4.0, float("inf"))
    assert H.figures(f, first)["minority_acks"] == 0
    assert H.figures(f, second)["minority_acks"] == 1
    assert H.figures(f)["writes_acknowledged"] == 2
    assert H.figures(f, second)["clock_spread_after_round_ms"] is None
    assert H.failed(H.figures(f)) == ["minority_acks"]


def good_rounds(*times):
    """Berkeley rounds that hold (a window with no round measured fails its spread)."""
    return [{"t": t, "spread_ms": 1.0} for t in times]


def copy(pid, lamport, ts=None, user="ann"):
    return {"id": pid, "text": f"{user} post {pid}", "lamport": lamport, "ts": ts}


def test_a_reply_naming_a_copy_that_is_not_kept_is_found():
    acked = H.acked_writes([post(1.0, "p1", lamport=3168, ts=1.005, tries=2),
                            post(2.0, "p2", lamport=40, ts=2.005),
                            write("dm", "bob", 3.0, id="m1", to="ann", text="bob to ann 0",
                                  lamport=50, ts=3.005),
                            post(4.0, "p3", lamport=60),                 # missing: lost instead
                            write("follow", "ann", 5.0, id="f1", target="bob", lamport=70)])
    good = {sid: H.Holdings([copy("p1", 3168, 1.005), copy("p2", 40, 2.005)],
                            {("ann", "bob"): [copy("m1", 50, 3.005, "bob")]}, {"ann": ["bob"]})
            for sid in (1, 2, 3)}
    assert H.wrong_copies(acked, good) == []
    # told L=3168 on server 1, but L=2800 on server 3 is stored (issue 13)
    bad = {**good, 3: H.Holdings([copy("p1", 2800, 0.9), copy("p2", 40, 2.005)],
                                 {("ann", "bob"): [copy("m1", 50, 3.105, "bob")]}, {})}
    found = H.wrong_copies(acked, bad)
    assert [(f["id"], f["told"]["lamport"], f["told"]["server"]) for f in found] == \
        [("p1", 3168, 1), ("m1", 50, 1)]
    assert found[0]["kept"] == {3: {"lamport": 2800, "ts": 0.9}}
    assert found[1]["kept"] == {3: {"lamport": 50, "ts": 3.105}}      # same stamp, other time
    f = H.Findings(acked=acked, wrong_copy=found, rounds=good_rounds(1.0))
    figs = H.figures(f)
    assert figs["replies_naming_a_copy_not_kept"] == 2
    assert H.failed(figs) == ["replies_naming_a_copy_not_kept"]
    assert H.figures(f, H.Window("one", 0.0, 2.0))["replies_naming_a_copy_not_kept"] == 1


def test_new_epochs_count_distinct_claims_after_the_start_against_each_faults_bound():
    claims = [H.Claim(3, 103, 1.0),                              # the start: not counted
              H.Claim(3, 103, 12.0),                             # announced again: same epoch
              H.Claim(2, 202, 21.0), H.Claim(3, 303, 21.2),      # churn under loss
              H.Claim(2, 402, 31.0), H.Claim(3, 503, 36.0)]      # kill: successor, takeover
    epochs = H.new_epochs(claims, since=5.0)
    assert [(e["epoch"], e["server"]) for e in epochs] == [(202, 2), (303, 3), (402, 2), (503, 3)]
    f = H.Findings(epochs=epochs, rounds=good_rounds(10.0, 25.0, 35.0))
    windows = [H.Window("isolate", float("-inf"), 20.0), H.Window("loss", 20.0, 30.0),
               H.Window("kill", 30.0, float("inf"))]
    counts = {w.label: H.figures(f, w)["new_epochs"] for w in windows}
    assert counts == {"isolate": 0, "loss": 2, "kill": 2}
    assert [w.label for w in windows if H.failed(H.figures(f, w), [w.label])] == ["loss"]
    assert H.figures(f)["new_epochs"] == 4
    assert H.epoch_limit([w.label for w in windows]) == 2       # the run's bound: their sum
    assert H.failed(H.figures(f), [w.label for w in windows]) == ["new_epochs"]
    assert H.failed(H.figures(f), ["kill", "pause"]) == []


def test_retried_writes_are_the_acked_ones_sent_more_than_once():
    acked = H.acked_writes([post(1.0, "a", tries=1), post(2.0, "b", tries=3), post(3.0, "c"),
                            post(4.0, "d", ok=False, tries=4)])
    assert [w["id"] for w in H.retried_writes(acked)] == ["b"]
    figs = H.figures(H.Findings(acked=acked, retried=H.retried_writes(acked),
                                rounds=good_rounds(1.0)))
    assert figs["retried_writes"] == 1 and H.failed(figs) == []       # reported, no bound


def test_a_retry_onto_a_copy_another_server_made_is_found_in_the_logs():
    s1 = log(1, ("04.000000", "retry of bb1b97d7fbb54a1f (try 2): held as 2:80 from try 1; "
                              "this try's copy replaces it"),
             ("05.000000", "retry of aa00 (try 3): held as 1:31 from try 2; this try's copy "
                           "replaces it"),                     # its own copy: one origin
             ("06.000000", "retry of cc11: already applied as 3:7"))
    found = H.crossed_retries(1, s1)
    assert [(c["rid"], c["origin"]) for c in found] == [("bb1b97d7fbb54a1f", 2)]
    f = H.Findings(crossed=found + H.crossed_retries(3, log(3, (
        "04.500000", "retry of bb1b97d7fbb54a1f (try 3): held as 1:81 from try 2; x"))))
    assert H.figures(f)["retries_onto_another_servers_copy"] == 1          # one request


@pytest.mark.timeout(30)
def test_the_workloads_connection_counts_the_tries_of_a_request():
    import socket
    import zmq
    from clients.connection import ClientError
    from clients.nemesis.workload import CountingConnection
    from common import protocol as P
    from common.clock import LamportClock, PhysicalClock
    from common.config import load_config
    with socket.socket() as free:          # a port nobody answers on: every try times out
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    config = load_config(host="127.0.0.1", port_base=port, request_timeout=0.2,
                         request_deadline=0.5)
    conn = CountingConnection(config, "ann", LamportClock(), PhysicalClock(),
                              broker_key=zmq.curve_keypair()[0])
    try:
        with pytest.raises(ClientError):
            conn.request(P.OP_FEED, {"limit": 10})
        assert conn.tries >= 3
    finally:
        conn.close()


# --- not root ------------------------------------------------------------------------------
def test_not_root_says_so_in_one_line_and_exits_2(monkeypatch):
    import run_all
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(run_all.app, ["nemesis", "--quick"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "root" in lines[0], result.output


@pytest.mark.timeout(60)
def test_not_root_as_a_real_user_exits_2():
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the command as nobody")
    done = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           sys.executable, "-c", "import os; os.listdir('.')"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"nobody cannot read {ROOT}: {done.stderr.strip()[-120:]}")
    done = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           sys.executable, "run_all.py", "nemesis", "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=50,
                          env={**os.environ, "HOME": "/nonexistent"})
    assert done.returncode == 2, done.stdout + done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "root" in lines[0], lines


# --- the real run ----------------------------------------------------------------------------
@pytest.mark.timeout(240)
def test_nemesis_quick_holds_every_must_be_and_leaves_nothing_behind(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the nemesis needs root: network namespaces and iptables")
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            pytest.skip(f"the nemesis needs {tool}")
    out = tmp_path / "nemesis.json"
    proc = subprocess.Popen([sys.executable, "run_all.py", "nemesis", "--quick", "--json", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=220)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    print(output)
    assert traces(prefix_of(proc.pid)) == [], "the nemesis left these behind"
    assert out.exists(), output
    document = json.loads(out.read_text())
    figures = document["figures"]
    assert figures["writes_acknowledged"] > 0
    assert [f["label"] for f in document["faults"]] == ["isolate", "loss", "kill", "pause", "clock"]
    labels = [f["label"] for f in document["faults"]]
    held = {name: figures[name] for name in [*H.MUST_BE, "new_epochs"]}
    assert H.failed(figures, labels) == [], f"must-be figures that do not hold: {held}"
    epochs = {f["label"]: f["figures"]["new_epochs"] for f in document["faults"]}
    assert all(epochs[label] <= H.epoch_limit([label]) for label in labels), \
        f"new epochs per fault: {epochs}, details: {document['details']['new_epochs']}"
    assert document["failed"] == []
    assert document["problems"] == []
    assert document["verdict"] == "pass"
    assert proc.returncode == 0, output


@pytest.mark.timeout(90)
def test_the_leftovers_of_a_killed_nemesis_are_removed_by_the_next(tmp_path):
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        pytest.skip("the nemesis needs root and iptables")
    from clients.nemesis.topology import STATE_DIR, remove_leftovers
    from common.ownership import pid_alive
    from common.processes import wait_until
    proc = subprocess.Popen([sys.executable, "run_all.py", "nemesis", "--quick", "--json",
                             str(tmp_path / "n.json")], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    prefix = prefix_of(proc.pid)
    state = STATE_DIR / f"{prefix.rstrip('-')}.json"
    try:       # killed once its servers run: no handler, no cleanup of its own
        wait_until(lambda: state.exists() and len(json.loads(state.read_text())["pids"]) >= 3,
                   40, what="the nemesis's servers started")
    finally:
        proc.kill()
        proc.wait(10)
    recorded = json.loads(state.read_text())
    assert traces(prefix), "the killed nemesis should have left its namespaces"
    cleaned = remove_leftovers()
    assert any(f"pid {proc.pid} " in line for line in cleaned), cleaned
    assert traces(prefix) == []
    assert not state.exists()
    wait_until(lambda: not any(pid_alive(p) for p in recorded["pids"]), 10,
               what="the processes in its namespaces gone")
