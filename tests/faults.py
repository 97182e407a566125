"""Faults and checks for the membership and churn tests (issue 3).

Signals go only to processes the test's ``Cluster`` started, by pid, through
its ``ProcessGroup``. Every wait is on a condition with a deadline
(``wait_until``). A load thread (writer or reader) pauses between its own
requests to shape the load, never to synchronize; it pauses by waiting on its stop
signal, so ``stop()`` ends the pause at once.
"""
from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from common import log_lines as LL
from clients.connection import ClientError
from common import protocol as P
from common.config import Config
from common.processes import wait_until
from tests.harness import FAST_TIMING, Cluster

DEFAULT_TIMING = {name: str(getattr(Config(), name[len("SOCIAL_"):].lower()))
                  for name in FAST_TIMING}
"""The production timings (Config's defaults), for tests of the issue's time limits."""

READ_LIMIT = P.MAX_LIMIT
"""Feeds and chats are read whole, so the tests keep each one below this many items."""


# --- signals and the broker's pool --------------------------------------------------------
def freeze(cluster: Cluster, name: str) -> None:
    cluster.group.signal(name, signal.SIGSTOP)


def thaw(cluster: Cluster, name: str) -> None:
    cluster.group.signal(name, signal.SIGCONT)


def restart_broker(cluster: Cluster) -> None:
    cluster.group.start_broker()


def in_pool(cluster: Cluster, server_id: int) -> bool | None:
    """Whether the broker shows ``server_id`` alive; None if the broker does not answer."""
    status = cluster.status()
    if status is None:
        return None
    return any(s["id"] == server_id and s["alive"] for s in status["servers"])


def wait_out_of_pool(cluster: Cluster, server_id: int, timeout: float) -> float:
    """Seconds until ``status`` stops showing ``server_id`` alive."""
    start = time.monotonic()
    wait_until(lambda: in_pool(cluster, server_id) is False, timeout, interval=0.02,
               what=f"server-{server_id} out of the broker's pool")
    return time.monotonic() - start


# --- logs -------------------------------------------------------------------------------------
def log_mark(cluster: Cluster, name: str) -> int:
    path = cluster.config.log_path(name)
    return path.stat().st_size if path.exists() else 0


def log_after(cluster: Cluster, name: str, mark: int) -> str:
    path = cluster.config.log_path(name)
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(mark)
        return f.read().decode(errors="replace")


def wait_log(cluster: Cluster, name: str, mark: int, text: str, timeout: float) -> str:
    """Wait until ``text`` appears in ``name``'s log after ``mark``; returns that log."""
    return wait_until(lambda: (lambda log: log if text in log else None)(
        log_after(cluster, name, mark)), timeout, interval=0.05,
        what=f"{text!r} in the log of {name}")


RELOADED_RE = LL.pattern(LL.STARTED)


def fetched(log: str) -> tuple[int, int]:
    """(events received, events new to the server) over every EVENTS reply in ``log``."""
    pairs = [(int(f["events"]), int(f["new"])) for f in LL.parse_all(LL.FETCHED, log)]
    return sum(a for a, _ in pairs), sum(b for _, b in pairs)


# --- users writing ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Write:
    """One acknowledged write: what it was, its id, and the reply's copy count."""
    op: str
    id: str
    user: str
    other: str | None
    replicas: int
    latency: float


@dataclass
class Writers:
    """Users writing posts, follows and private messages, each on a thread and a
    Lazy Pirate connection of their own, until ``stop()``; with ``window`` above 1,
    each on a Pipeline (``clients/pipeline.py``) with that many writes in flight."""
    cluster: Cluster
    users: list[str]
    deadline: float = 60.0
    pause: float = 0.02
    max_posts: int = 150
    """Posts per user at most, so one feed read holds them all (see READ_LIMIT)."""
    ops: tuple[str, ...] = (P.OP_POST, P.OP_POST, P.OP_DM, P.OP_DM, P.OP_FOLLOW)
    seed: int = 1
    window: int = 1
    acked: list[Write] = field(default_factory=list)
    errors: list[tuple[str, str, BaseException]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> "Writers":
        for i, user in enumerate(self.users):
            thread = threading.Thread(target=self._run, args=(user, random.Random(self.seed + i)),
                                      name=f"writer-{user}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop writing; waits for the writes in flight (each ends by its deadline)."""
        self._stop.set()
        limit = time.monotonic() + (timeout if timeout is not None else self.deadline + 10)
        for thread in self._threads:
            thread.join(max(0.0, limit - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"writers still running: {alive}"

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def wait_for(self, more: int, timeout: float) -> None:
        """Wait until ``more`` writes beyond those acked so far are acked."""
        target = self.count() + more
        wait_until(lambda: self.count() >= target or self.errors, timeout, interval=0.02,
                   what=f"{more} more acknowledged writes")
        assert not self.errors, self.errors

    def max_latency(self) -> float:
        with self._lock:
            return max((w.latency for w in self.acked), default=0.0)

    def _next(self, user: str, others: list[str], rng: random.Random,
              posts: int) -> tuple[str, str | None, dict]:
        """The next write of ``user``: (op, the other user or None, its args)."""
        op = rng.choice(self.ops)
        if op == P.OP_POST and posts >= self.max_posts:
            op = P.OP_DM
        other = None if op == P.OP_POST else rng.choice(others)
        args = {P.OP_POST: lambda: {"text": f"{user} post {posts}"},
                P.OP_DM: lambda: {"to": other, "text": f"{user} to {other}"},
                P.OP_FOLLOW: lambda: {"target": other}}[op]()
        return op, other, args

    def _acked(self, op: str, user: str, other: str | None, result: dict,
               latency: float) -> None:
        item = result[{P.OP_POST: "post", P.OP_DM: "message", P.OP_FOLLOW: "follow"}[op]]
        with self._lock:
            self.acked.append(Write(op, item["id"], user, other, result["replicas"], latency))

    def _run(self, user: str, rng: random.Random) -> None:
        if self.window > 1:
            self._run_pipelined(user, rng)
            return
        others = [u for u in self.users if u != user]
        posts = 0
        conn = self.cluster.connection(user, self.deadline)
        try:
            while not self._stop.is_set():
                op, other, args = self._next(user, others, rng, posts)
                started = time.monotonic()
                try:
                    result = conn.request(op, args)
                except ClientError as exc:
                    self.errors.append((user, op, exc))
                    return
                self._acked(op, user, other, result, time.monotonic() - started)
                posts += op == P.OP_POST
                if self.pause:                  # load shaping; stop() ends it at once
                    self._stop.wait(rng.uniform(0, 2 * self.pause))
        except BaseException as exc:   # noqa: BLE001 - reported by the test's thread
            self.errors.append((user, "?", exc))
        finally:
            conn.close()

    def _run_pipelined(self, user: str, rng: random.Random) -> None:
        """Up to ``window`` writes in flight; at ``stop()`` the ones in flight finish."""
        from clients.pipeline import Pipeline
        import dataclasses
        import zmq
        from common import keys
        others = [u for u in self.users if u != user]
        posts = 0
        ctx = zmq.Context()
        ctx.linger = 0
        config = dataclasses.replace(self.cluster.config, request_deadline=self.deadline)
        pipe = Pipeline(ctx, config, user, keys.broker_public_key(config.data_dir),
                        window=self.window, token=self.cluster.login(user))
        meta: dict[str, tuple[str, str | None]] = {}
        try:
            while not self._stop.is_set() or pipe.pending:
                while not self._stop.is_set() and pipe.pending < self.window:
                    op, other, args = self._next(user, others, rng, posts)
                    meta[pipe.submit(op, args)] = (op, other)
                    posts += op == P.OP_POST
                for done in pipe.poll(0.02):
                    op, other = meta.pop(done.rid)
                    if not done.ok:
                        self.errors.append((user, op, ClientError(
                            done.code or "?", str((done.reply or {}).get("error")))))
                        return
                    self._acked(op, user, other, done.reply["result"],
                                done.finished - done.issued)
                if self.pause:                  # load shaping; stop() ends it at once
                    self._stop.wait(rng.uniform(0, 2 * self.pause))
        except BaseException as exc:   # noqa: BLE001 - reported by the test's thread
            self.errors.append((user, "?", exc))
        finally:
            pipe.close()
            ctx.destroy(0)


class BusyReaders:
    """Threads reading a whole feed from one server, pinned, over and over: its loop
    then spends most of its time handling requests rather than waiting in poll."""

    def __init__(self, cluster: Cluster, server: int, user: str, threads: int = 3) -> None:
        self.cluster = cluster
        self.server = server
        self.user = user
        self.reads = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> "BusyReaders":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self) -> None:
        conn = self.cluster.connection(self.user, 2.0)
        try:
            while not self._stop.is_set():
                try:
                    conn.request(P.OP_FEED, {"limit": READ_LIMIT}, self.server)
                    self.reads += 1
                except ClientError:     # out of the pool while frozen: ask again soon,
                    self._stop.wait(0.01)   # or not at all once stop() is called
        finally:
            conn.close()


def write_posts(cluster: Cluster, total: int, connections: int, user: str = "bulk") -> list[dict]:
    """``total`` posts by ``user`` written as fast as ``connections`` parallel
    Lazy Pirate connections go; returns the acked results."""
    cluster.request(user, P.OP_REGISTER, {})
    results: list[list[dict]] = [[] for _ in range(connections)]
    errors: list[BaseException] = []

    def write(k: int) -> None:
        conn = cluster.connection(user, 60.0)
        try:
            for i in range(k, total, connections):
                results[k].append(conn.request(P.OP_POST, {"text": f"bulk {i}"}))
        except BaseException as exc:   # noqa: BLE001
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=write, args=(k,)) for k in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not errors, errors[:3]
    return [r for chunk in results for r in chunk]


# --- checking every server --------------------------------------------------------------------
@dataclass
class Holdings:
    """What every server returns, pinned, for the users' feeds, chats and follows."""
    feeds: dict[int, dict[str, list[dict]]]
    chats: dict[int, dict[tuple[str, str], list[dict]]]
    following: dict[int, dict[str, list[str]]]

    @property
    def servers(self) -> list[int]:
        return sorted(self.feeds)


def read_everything(cluster: Cluster, servers, users: list[str]) -> Holdings:
    feeds, chats, following = {}, {}, {}
    pairs = [(a, b) for i, a in enumerate(users) for b in users[i + 1:]]
    for server in servers:
        conn = cluster.connection(users[0], 20.0)
        try:
            feeds[server] = {u: _pinned(conn, u, P.OP_FEED, {"limit": READ_LIMIT}, server,
                                        cluster)["posts"] for u in users}
            chats[server] = {(a, b): _pinned(conn, a, P.OP_CHAT, {"with": b, "limit": READ_LIMIT},
                                             server, cluster)["messages"] for a, b in pairs}
            following[server] = {u: _pinned(conn, u, P.OP_FOLLOWING, {}, server,
                                            cluster)["following"] for u in users}
        finally:
            conn.close()
    return Holdings(feeds, chats, following)


def _pinned(conn, user: str, op: str, args: dict, server: int, cluster: Cluster) -> dict:
    conn.user, conn.token = user, cluster.login(user)     # read as that user, with their session
    result = conn.request(op, args, server)
    assert result["server"] == server, f"{op} pinned to {server} answered by {result['server']}"
    return result


@dataclass
class Audit:
    checked: int = 0          # (acked write, server) pairs looked up
    lost: list = field(default_factory=list)          # (server, write id) missing
    duplicated: list = field(default_factory=list)    # (server, write id) seen twice
    disordered: list = field(default_factory=list)    # what differs between servers


def audit(holdings: Holdings, acked: list[Write]) -> Audit:
    """Every acked write on every server exactly once; every feed and chat in the same
    order on every server; a feed read whole holds every post."""
    result = Audit()
    servers = holdings.servers
    for server in servers:
        any_feed = next(iter(holdings.feeds[server].values()))
        assert len(any_feed) < READ_LIMIT, "a feed reached the read limit: write fewer posts"
        post_ids = Counter(p["id"] for p in any_feed)
        dm_ids = Counter(m["id"] for chat in holdings.chats[server].values()
                         for m in chat)
        for write in acked:
            result.checked += 1
            if write.op == P.OP_FOLLOW:
                found = int(write.other in holdings.following[server][write.user])
            else:
                found = (post_ids if write.op == P.OP_POST else dm_ids)[write.id]
            if found == 0:
                result.lost.append((server, write.op, write.id))
            elif found > 1:
                result.duplicated.append((server, write.op, write.id))
    first = servers[0]
    for server in servers[1:]:
        for what, views in (("feed", holdings.feeds), ("chat", holdings.chats),
                            ("following", holdings.following)):
            for key, items in views[server].items():
                if items != views[first][key]:
                    result.disordered.append(f"{what} {key}: server-{server} differs "
                                             f"from server-{first}")
    return result
