"""Live push (issue 5): ``listen`` is a replicated long poll, end to end.

A listener is the real CLI, ``python -m clients --user bob listen --json``, run as
a subprocess with the cluster's environment; a reader thread collects the JSON
lines it prints, so a test waits for *items* (with a deadline), never for time.
Writers are Lazy Pirate connections in-process: one connection per user, so a
user's writes are causally ordered and their Lamport stamps grow.

Which server holds a parked listen is read from the servers' logs: the one that
logged ``recv bob | listen rid=R`` and has not yet logged ``reply rid=R``.

A *barrier* post ends most tests: the listen that pushes it takes every item not
yet shown at that moment, so anything wrongly pushable (a duplicate, a post by
someone not followed) would have been printed by the time the barrier is.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from clients.connection import Connection
from common import protocol as P
from common.processes import ROOT, wait_until
from tests.faults import freeze, thaw
from tests.harness import Cluster

PUSH_DEADLINE = 30.0
"""Seconds for a write to reach a listener that is parked on a live server."""
LISTEN_WAIT = 10.0
"""The CLI's long-poll ``wait`` (seconds) when it has more than that left to run."""
FAILOVER_DEADLINE = LISTEN_WAIT + 35.0
"""The listener notices its server died only when the wait plus one request
timeout has passed; then it retries elsewhere. Generous: the machine is shared."""
LISTENER_SECONDS = 300.0
"""``--seconds`` of listeners the test stops itself (it outlives any test)."""

RECV_LISTEN_RE = re.compile(r"\| recv (?P<user>\w+) \| listen rid=(?P<rid>\S+)")
REPLY_RE = re.compile(r"\| send \S+ \| reply rid=(?P<rid>\S+)")


# --- the listener: the CLI as a subprocess ----------------------------------------------------
class Listener:
    """``python -m clients --user USER listen --seconds S --json``, its lines collected
    by a reader thread. Use as a context manager: it is always stopped on exit."""

    def __init__(self, cluster: Cluster, user: str, seconds: float = LISTENER_SECONDS) -> None:
        self.user = user
        self._lock = threading.Lock()
        self._items: list[dict] = []
        self.garbage: list[str] = []
        self.stderr_path = cluster.folder / f"listen-{user}-{time.monotonic_ns()}.err"
        command = [sys.executable, "-m", "clients", "--user", user,
                   "listen", "--seconds", str(seconds), "--json"]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=cluster.env, text=True,
                                         stdout=subprocess.PIPE, stderr=err)
        self._reader = threading.Thread(target=self._read, name=f"listen-{user}", daemon=True)
        self._reader.start()

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                item = json.loads(line)
            except ValueError:
                item = None
            with self._lock:
                if isinstance(item, dict):
                    self._items.append(item)
                else:
                    self.garbage.append(line)

    def items(self) -> list[dict]:
        with self._lock:
            return list(self._items)

    def ids(self) -> list[str]:
        return [item["id"] for item in self.items()]

    def wait_for(self, ids, timeout: float = PUSH_DEADLINE) -> list[dict]:
        """Wait until every id in ``ids`` was printed; returns all items so far."""
        wanted = set(ids)
        wait_until(lambda: wanted <= set(self.ids()) or self._exited(), timeout,
                   interval=0.05, what=f"{self.user}'s listener to print {sorted(wanted)}")
        missing = wanted - set(self.ids())
        assert not missing, f"listener exited ({self.proc.returncode}) without {missing}: " \
                            f"{self.stderr()}"
        return self.items()

    def _exited(self) -> bool:
        return self.proc.poll() is not None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace").strip()

    def finish(self, timeout: float) -> int:
        """Wait for the listener to stop by itself (``--seconds``); its exit code."""
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        """Ctrl-C, as a user would; SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)           # its cancel: CANCEL_DEADLINE + one timeout
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        self.proc.stdout.close()


# --- helpers ------------------------------------------------------------------------------------
def order(item: dict) -> tuple[int, str]:
    return (item["lamport"], item["id"])


def register(cluster: Cluster, *users: str) -> None:
    for user in users:
        cluster.request(user, P.OP_REGISTER, {})


def parked_listens(cluster: Cluster, user: str) -> dict[str, str]:
    """rid -> server name for each listen of ``user`` that a live server received
    and has not answered yet (parked, or its SEEN still replicating)."""
    parked: dict[str, str] = {}
    for name in cluster.names():
        if not name.startswith("server-") or not cluster.alive(name):
            continue
        log = cluster.log_text(name)
        pending = Counter(m["rid"] for m in RECV_LISTEN_RE.finditer(log) if m["user"] == user)
        pending.subtract(m["rid"] for m in REPLY_RE.finditer(log))
        parked.update({rid: name for rid, n in pending.items() if n > 0})
    return parked


def wait_parked(cluster: Cluster, user: str, count: int = 1,
                timeout: float = PUSH_DEADLINE) -> dict[str, str]:
    """Wait until ``count`` listens of ``user`` are parked on live servers."""
    def enough() -> dict[str, str] | None:
        parked = parked_listens(cluster, user)
        return parked if len(parked) >= count else None
    return wait_until(enough, timeout, interval=0.05,
                      what=f"{count} listen(s) of {user} parked on a server")


class Writer:
    """One user's Lazy Pirate connection: their writes are causally ordered."""

    def __init__(self, cluster: Cluster, user: str, deadline: float = 30.0) -> None:
        self.conn: Connection = cluster.connection(user, deadline)

    def post(self, text: str) -> dict:
        return self.conn.request(P.OP_POST, {"text": text})["post"]

    def dm(self, to: str, text: str) -> dict:
        return self.conn.request(P.OP_DM, {"to": to, "text": text})["message"]

    def close(self) -> None:
        self.conn.close()


def bob_follows_alice(c: Cluster) -> None:
    """The setting of most tests here: alice and bob exist, bob follows alice."""
    register(c, "alice", "bob")
    c.request("bob", P.OP_FOLLOW, {"target": "alice"})


def assert_each_once(items: list[dict]) -> None:
    twice = [i for i, n in Counter(item["id"] for item in items).items() if n > 1]
    assert not twice, f"pushed more than once: {twice} in {items}"


def assert_logical_order(items: list[dict]) -> None:
    keys = [order(item) for item in items]
    assert keys == sorted(keys), f"not in (lamport, id) order: {keys}"


# --- delivery and order -----------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_listen_pushes_followed_posts_and_messages_once_in_logical_order(running: Cluster):
    c = running
    bob_follows_alice(c)
    alice = Writer(c, "alice")
    try:
        with Listener(c, "bob") as bob:
            wait_parked(c, "bob")
            sent = [alice.post("first post"), alice.dm("bob", "hi bob"),
                    alice.post("second post"), alice.dm("bob", "are you there?"),
                    alice.post("third post")]
            barrier = alice.post("barrier")
            items = bob.wait_for([s["id"] for s in sent + [barrier]])
    finally:
        alice.close()

    assert not bob.garbage, f"non-JSON lines: {bob.garbage}"
    assert_each_once(items)
    assert [i["id"] for i in items] == [s["id"] for s in sent + [barrier]]
    assert_logical_order(items)
    by_id = {s["id"]: s for s in sent}
    for item in items[:-1]:
        expected = by_id[item["id"]]
        assert isinstance(item["lamport"], int) and item["lamport"] == expected["lamport"]
        assert item["text"] == expected["text"]
        if "author" in expected:
            assert item["type"] == "post" and item["author"] == "alice"
        else:
            assert item["type"] == "message"
            assert (item["from"], item["to"]) == ("alice", "bob")
    assert [i["type"] for i in items] == ["post", "message", "post", "message", "post", "post"]


@pytest.mark.timeout(60)
def test_a_long_poll_answers_as_soon_as_an_item_arrives_and_empty_after_its_wait(
        running: Cluster):
    c = running
    bob_follows_alice(c)

    started = time.monotonic()
    empty = c.request("bob", P.OP_LISTEN, {"wait": 1.0, "since": 0})
    assert empty["items"] == [] and time.monotonic() - started >= 0.9

    answers: list[dict] = []
    bob = c.connection("bob", 30.0)
    waiting = threading.Thread(target=lambda: answers.append(
        bob.request(P.OP_LISTEN, {"wait": P.MAX_LISTEN_WAIT, "since": 0})), daemon=True)
    alice = Writer(c, "alice")
    try:
        waiting.start()
        wait_parked(c, "bob")
        post = alice.post("wake up")
        waiting.join(P.MAX_LISTEN_WAIT / 2)
        assert not waiting.is_alive(), "the parked listen was not answered when the post came"
    finally:
        waiting.join(P.MAX_LISTEN_WAIT + 10)
        alice.close()
        bob.close()
    [answer] = answers
    assert [(i["id"], i["type"]) for i in answer["items"]] == [(post["id"], "post")]
    assert answer["replicas"] == 3           # marking it shown is a replicated write


# --- no duplicates across sessions and listeners -------------------------------------------------
@pytest.mark.timeout(150)
def test_listen_sessions_one_after_another_push_each_item_once(running: Cluster):
    c = running
    bob_follows_alice(c)
    alice = Writer(c, "alice")
    try:
        # the first session stops by itself (--seconds): nothing of it stays parked
        with Listener(c, "bob", seconds=20) as first:
            wait_parked(c, "bob")
            one = [alice.post("one"), alice.dm("bob", "dm one"), alice.post("two")]
            first.wait_for(s["id"] for s in one)
            assert first.finish(timeout=60) == 0, first.stderr()
        offline = alice.post("while bob was away")     # caught up by the next session

        with Listener(c, "bob") as second:
            wait_parked(c, "bob")
            two = [alice.post("three"), alice.dm("bob", "dm two")]
            barrier = alice.post("barrier")
            second.wait_for([offline["id"]] + [s["id"] for s in two] + [barrier["id"]])
    finally:
        alice.close()

    pushed = first.items() + second.items()
    assert_each_once(pushed)
    assert first.ids() == [s["id"] for s in one]
    assert second.ids() == [offline["id"]] + [s["id"] for s in two] + [barrier["id"]]
    assert_logical_order(pushed)
    # what listen showed, notifications does not show again
    assert c.cli("bob", "notifications")["notifications"] == []


@pytest.mark.timeout(150)
def test_two_listeners_of_one_user_at_once_push_each_item_once(running: Cluster):
    c = running
    bob_follows_alice(c)
    alice = Writer(c, "alice")
    sent: list[dict] = []
    try:
        with Listener(c, "bob") as left, Listener(c, "bob") as right:
            for n in range(4):
                # both parked again before each write, wherever the broker put them
                wait_parked(c, "bob", count=2)
                sent.append(alice.post(f"post {n}") if n % 2 == 0 else alice.dm("bob", f"dm {n}"))
                wait_until(lambda: sent[-1]["id"] in left.ids() + right.ids(), PUSH_DEADLINE,
                           what=f"write {n} pushed to either listener")
            barrier = alice.post("barrier")
            wait_until(lambda: barrier["id"] in left.ids() + right.ids(), PUSH_DEADLINE,
                       what="the barrier pushed")
            sent.append(barrier)
    finally:
        alice.close()

    pushed = left.items() + right.items()
    assert_each_once(pushed)
    assert sorted(i["id"] for i in pushed) == sorted(s["id"] for s in sent)
    for listener in (left, right):
        assert_logical_order(listener.items())


# --- offline catch-up ------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_offline_user_finds_items_in_notifications_and_chat_and_is_not_pushed_them_again(
        running: Cluster):
    c = running
    bob_follows_alice(c)
    alice = Writer(c, "alice")
    try:
        posts = [alice.post("while you were out"), alice.post("still out?")]
        message = alice.dm("bob", "call me")

        shown = c.cli("bob", "notifications")["notifications"]
        assert [p["id"] for p in shown] == [p["id"] for p in posts]
        chat = c.cli("bob", "chat", "alice")["messages"]
        assert [m["id"] for m in chat] == [message["id"]]

        with Listener(c, "bob") as bob:
            wait_parked(c, "bob")
            barrier = alice.post("now you are here")
            items = bob.wait_for([barrier["id"]])
    finally:
        alice.close()
    assert [i["id"] for i in items] == [barrier["id"]], "offline items pushed again"


@pytest.mark.timeout(120)
def test_a_post_made_after_the_listener_stops_is_in_notifications(running: Cluster):
    """Ctrl-C ends the listener while its long poll is parked on a server; a post
    made afterwards must not be marked shown on behalf of a listener that is gone."""
    c = running
    bob_follows_alice(c)
    alice = Writer(c, "alice")
    try:
        with Listener(c, "bob") as bob:
            wait_parked(c, "bob")
        assert bob.items() == []
        post = alice.post("did you leave?")
    finally:
        alice.close()
    shown = c.cli("bob", "notifications")["notifications"]
    assert [p["id"] for p in shown] == [post["id"]], \
        "a post was marked shown for a listener that had stopped, and is lost to notifications"


# --- the producing server dies -------------------------------------------------------------------
@pytest.mark.timeout(150)
def test_listen_survives_sigkill_of_the_server_holding_it(running: Cluster):
    c = running
    bob_follows_alice(c)
    alice = Writer(c, "alice", deadline=60.0)
    try:
        with Listener(c, "bob") as bob:
            parked = wait_parked(c, "bob")
            [(rid, holder)] = parked.items()
            c.kill(holder)
            post = alice.post("are you still there?")
            bob.wait_for([post["id"]], timeout=FAILOVER_DEADLINE)
            barrier = alice.post("barrier")
            items = bob.wait_for([barrier["id"]])
    finally:
        alice.close()
    assert [i["id"] for i in items] == [post["id"], barrier["id"]]
    survivors = [n for n in c.names() if n.startswith("server-") and c.alive(n)]
    assert holder not in survivors and len(survivors) == 2
    # the retried long poll (same rid) was answered by a survivor
    assert any(f"reply rid={rid}" in c.log_text(n) for n in survivors), \
        f"no survivor answered the listen {rid} that {holder} held"


@pytest.mark.timeout(150)
def test_listen_retried_past_a_frozen_server_pushes_each_item_once(running: Cluster):
    """The server holding the long poll stalls (SIGSTOP) and comes back after the
    listener retried elsewhere: it must not push the same items a second time."""
    c = running
    bob_follows_alice(c)
    alice = Writer(c, "alice", deadline=60.0)
    try:
        with Listener(c, "bob") as bob:
            [(rid, holder)] = wait_parked(c, "bob").items()
            freeze(c, holder)
            try:
                post = alice.post("are you frozen?")
                bob.wait_for([post["id"]], timeout=FAILOVER_DEADLINE)
            finally:
                thaw(c, holder)
            c.wait_serving({1, 2, 3})
            barrier = alice.post("barrier")
            items = bob.wait_for([barrier["id"]])
    finally:
        alice.close()
    assert [i["id"] for i in items] == [post["id"], barrier["id"]]
    assert c.cli("bob", "notifications")["notifications"] == []


# --- who is pushed what ------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_only_posts_by_followed_users_are_pushed_never_ones_own(running: Cluster):
    c = running
    register(c, "alice", "bob", "carol")
    c.request("bob", P.OP_FOLLOW, {"target": "alice"})
    c.request("alice", P.OP_FOLLOW, {"target": "bob"})
    c.request("bob", P.OP_FOLLOW, {"target": "carol"})
    c.request("bob", P.OP_UNFOLLOW, {"target": "carol"})
    alice, bob, carol = Writer(c, "alice"), Writer(c, "bob"), Writer(c, "carol")
    try:
        with Listener(c, "bob") as bob_hears, Listener(c, "alice") as alice_hears:
            wait_parked(c, "bob")
            wait_parked(c, "alice")
            by_alice = alice.post("alice speaks")
            carol.post("carol, unfollowed by bob, speaks")
            carol.dm("alice", "a message to alice only")
            by_bob = bob.post("bob speaks")
            bob_barrier, alice_barrier = alice.post("alice again"), bob.post("bob again")
            bob_items = bob_hears.wait_for([by_alice["id"], bob_barrier["id"]])
            alice_items = alice_hears.wait_for([by_bob["id"], alice_barrier["id"]])
    finally:
        for writer in (alice, bob, carol):
            writer.close()
    assert [(i["author"], i["text"]) for i in bob_items] == \
        [("alice", "alice speaks"), ("alice", "alice again")]
    assert [(i.get("author"), i.get("from"), i["text"]) for i in alice_items] == \
        [(None, "carol", "a message to alice only"), ("bob", None, "bob speaks"),
         ("bob", None, "bob again")]
