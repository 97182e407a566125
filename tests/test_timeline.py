"""Issue 5, the timeline: every process's log merged in Lamport order, with real processes.

A user's write leaves a trail across three kinds of process: the client sends
it (``send broker | post rid=X``), the broker routes it (``route
alice->server-2 | post rid=X``), a server receives it (``recv alice | post
rid=X``), publishes the event it made of it (``send bus | EVENT post id=X``)
and every other server receives that (``recv server-2 | EVENT post id=X``).
In the merged timeline each later step must carry a strictly larger Lamport
clock and come later.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest

from common.processes import ROOT, wait_until
from common.timeline import Entry, read_timeline
from tests.harness import Cluster

SERVERS = {1, 2, 3}


# --- finding a write's trail in the timeline -------------------------------------------
def first(entries: list[Entry], process_prefix: str, starts: str, contains: str) -> int | None:
    """Index of the first line of a process (by name prefix) whose text after the
    process starts with ``starts`` and contains ``contains``."""
    for i, e in enumerate(entries):
        if e.process.startswith(process_prefix) and e.rest.startswith(starts) \
                and contains in e.rest:
            return i
    return None


def request_trail(entries: list[Entry], user: str, op: str, rid: str) -> list[int] | None:
    """[client send, broker route, server receive] of one request, or None while incomplete."""
    trail = [first(entries, f"client-{user}", f"send broker | {op} rid={rid}", ""),
             first(entries, "broker", "route ", f"| {op} rid={rid}"),
             first(entries, "server-", f"recv {user} | {op} rid={rid}", "")]
    return None if None in trail else trail


def event_trail(entries: list[Entry], event_id: str) -> tuple[int, list[int]] | None:
    """(the origin's bus send, every other server's receive) of one event, once all are there."""
    send = first(entries, "server-", "send bus | EVENT ", f" id={event_id} ")
    if send is None:
        return None
    origin = entries[send].process
    receives = {}
    for i, e in enumerate(entries):
        if e.process.startswith("server-") and e.process != origin and e.process not in receives \
                and e.rest.startswith(f"recv {origin} | EVENT ") and f" id={event_id} " in e.rest:
            receives[e.process] = i
    return (send, sorted(receives.values())) if len(receives) == len(SERVERS) - 1 else None


def assert_causal(entries: list[Entry], chain: list[int], what: str) -> None:
    """Each step later in the timeline and with a strictly larger Lamport clock."""
    for before, after in zip(chain, chain[1:]):
        a, b = entries[before], entries[after]
        assert before < after, f"{what}: {b.text!r} comes before {a.text!r}"
        assert a.lamport < b.lamport, f"{what}: L={b.lamport} is not above L={a.lamport}"


def writes(cluster: Cluster) -> dict[str, tuple[str, str]]:
    """A post, a follow and a message through the CLI: rid -> (user, op)."""
    post = cluster.cli("alice", "post", "hello, timeline")["post"]["id"]
    follow = cluster.cli("bob", "follow", "alice")["follow"]["id"]
    dm = cluster.cli("bob", "dm", "alice", "hi alice")["message"]["id"]
    return {post: ("alice", "post"), follow: ("bob", "follow"), dm: ("bob", "dm")}


def trails(cluster: Cluster, rids: dict[str, tuple[str, str]]):
    """The merged timeline once every write's whole trail is in the logs."""
    def complete():
        entries = read_timeline(cluster.config.log_dir)
        found = {rid: (request_trail(entries, user, op, rid), event_trail(entries, rid))
                 for rid, (user, op) in rids.items()}
        ok = all(req is not None and ev is not None for req, ev in found.values())
        return (entries, found) if ok else None
    return wait_until(complete, 15, interval=0.1, what="every write's trail in the logs")


# --- the tests --------------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_every_send_precedes_its_receive_in_the_merged_timeline(cluster: Cluster):
    cluster.start(3)
    cluster.wait_serving(SERVERS)
    rids = writes(cluster)
    entries, found = trails(cluster, rids)

    assert entries == sorted(entries, key=lambda e: (e.lamport, e.process, e.source, e.position))
    for rid, (request, (send, receives)) in found.items():
        assert_causal(entries, request, f"request {rid}")
        # the server that received the request is the one that published its event
        assert entries[request[-1]].process == entries[send].process
        assert_causal(entries, [request[-1], send], f"request {rid} -> its event")
        for receive in receives:
            assert_causal(entries, [send, receive], f"event {rid}")


@pytest.mark.timeout(90)
def test_every_bus_event_received_was_sent_earlier_in_the_timeline(cluster: Cluster):
    """Not only the writes we made: every EVENT any server logged as received."""
    cluster.start(3)
    cluster.wait_serving(SERVERS)
    trails(cluster, writes(cluster))
    entries = read_timeline(cluster.config.log_dir)
    sent = {}
    for i, e in enumerate(entries):
        if e.rest.startswith("send bus | EVENT "):
            sent.setdefault(_event_id(e.rest), i)
    received = [(i, e) for i, e in enumerate(entries) if e.rest.startswith("recv server-")
                and " | EVENT " in e.rest]
    assert len(sent) >= 5                   # two users registered, three writes
    assert len(received) >= 2 * len(sent)   # each by both other servers
    for i, e in received:
        send = sent.get(_event_id(e.rest))
        assert send is not None and send < i, f"{e.text!r} has no earlier send"
        assert entries[send].lamport < e.lamport


@pytest.mark.timeout(90)
def test_run_all_timeline_prints_every_log_line_in_lamport_order(cluster: Cluster):
    cluster.start(3)
    cluster.wait_serving(SERVERS)
    rids = writes(cluster)
    trails(cluster, rids)
    done = subprocess.run([sys.executable, "run_all.py", "timeline", "--order", "lamport", "--log-dir",
                           cluster.config.log_dir], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    keys = [_key(line) for line in lines]
    assert keys == sorted(keys)
    processes = {key[1] for key in keys}
    assert {"broker", "server-1", "server-2", "server-3", "client-alice", "client-bob"} <= processes
    for rid, (user, op) in rids.items():
        assert any(f"| client-{user} | send broker | {op} rid={rid}" in line for line in lines)


@pytest.mark.timeout(90)
def test_timeline_follow_prints_new_lines_in_lamport_order_as_they_come(cluster: Cluster):
    cluster.start(3)
    cluster.wait_serving(SERVERS)
    follower = subprocess.Popen([sys.executable, "run_all.py", "timeline", "--follow",
                                 "--log-dir", cluster.config.log_dir], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(follower.stdout), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("| broker |" in line for line in lines), 15,
                   what="the follower to print what is already there")
        rid = cluster.cli("alice", "post", "live in the timeline")["post"]["id"]
        wanted = [(f"send broker | post rid={rid}",), ("| broker | route ", f"| post rid={rid}"),
                  (f"recv alice | post rid={rid}",), (f"EVENT post id={rid} ",)]

        def printed():
            return [next((i for i, line in enumerate(lines) if all(w in line for w in parts)),
                         None) for parts in wanted]
        wait_until(lambda: None not in printed(), 15, what="the new post's lines, followed")
        client, route, receive, event = printed()
        assert client < route < receive < event
        assert [_key(lines[i])[0] for i in (client, route, receive, event)] == \
            sorted(_key(lines[i])[0] for i in (client, route, receive, event))
    finally:
        follower.send_signal(signal.SIGINT)
        try:
            follower.wait(10)
        except subprocess.TimeoutExpired:        # never left behind, even when it hangs
            follower.kill()
            follower.wait(5)
            raise
        reader.join(5)
    assert follower.returncode == 0, follower.stderr.read()
    # new processes (a user's first command) start at a low L and come out when read, so
    # the whole output is not sorted; but every event received was printed after its send
    sent = {_event_id(line.split(" | ", 4)[4]) for line in lines if "| send bus | EVENT " in line}
    for i, line in enumerate(lines):
        if "| recv server-" in line and " | EVENT " in line:
            event_id = _event_id(line.split(" | ", 4)[4])
            assert event_id in sent and any(
                "| send bus | EVENT " in earlier and f" id={event_id} " in earlier
                for earlier in lines[:i]), f"{line!r} printed before its send"


def _event_id(rest: str) -> str:
    return rest.split(" id=", 1)[1].split(" ", 1)[0]


def _key(line: str) -> tuple[int, str]:
    _time, lamport, process, _ = line.split(" | ", 3)
    return int(lamport[2:]), process
