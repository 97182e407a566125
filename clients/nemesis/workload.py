"""The nemesis's users: a bounded, recorded load of posts, DMs, follows and reads.

    python -m clients.nemesis.workload --history FILE --users u1,u2,u3 --seconds S
        [--max-writes N] [--servers N] [--seed K]

Run in the users' namespace. Each user is a thread with its own Lazy Pirate
connection (``clients/connection.py``): it registers and logs in, then until
``--seconds`` have passed, ``--max-writes`` writes are done or SIGTERM, it posts
(a text unique to the run), sends messages, follows, and reads feeds, chats and
follows -- a third of the reads pinned to one server (``server=N``). Every request
is one JSON line in the history, written when its reply (or its failure) comes::

    {"user": "u1", "op": "post", "rid": "…", "sent": 1795715591.20, "replied": …,
     "ok": true, "code": null, "replicas": 3, "server": 2, "pinned": null, "tries": 1,
     "id": "…", "text": "u1 post 7", "lamport": 3168, "ts": 1795715591.21}

``tries`` is how many times the client sent the request (the same rid; try k carries
``attempt`` k-1): above 1, it was retried after a timeout or a retryable error,
likely on another server. A write's ``lamport`` and ``ts`` are those of the copy the
reply names, which must be the copy every server keeps. Reads add ``seen``: the post
or message ids returned (feed, chat) or the names followed (following). Posts per user stay below a feed's limit over all users, so
a feed read shows every post, and a read can be checked against every write acked
before it. Times are the host's clock (``time.time()``), which every namespace shares.
"""
from __future__ import annotations

import random
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Optional

import orjson
import typer

from clients.connection import ClientError, Connection
from common import protocol as P
from common.clock import LamportClock, PhysicalClock
from common.config import load_config

PASSWORD = "nemesis-pass-4Kd9"
REQUEST_DEADLINE = 6.0
"""Seconds a request is retried before it counts as failed: keeps the load bounded."""
PAUSE = 0.1
"""Mean seconds a user pauses between requests (load shaping only)."""
READ_LIMIT = P.MAX_LIMIT
OPS = ((P.OP_POST, 30), (P.OP_DM, 25), (P.OP_FOLLOW, 8),
       (P.OP_FEED, 20), (P.OP_CHAT, 12), (P.OP_FOLLOWING, 5))
PINNED_SHARE = 1 / 3


class History:
    """The JSON-lines file every thread appends to, one flushed line per record."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "ab")
        self._lock = threading.Lock()

    def add(self, record: dict) -> None:
        line = orjson.dumps(record) + b"\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        self._file.close()


class CountingConnection(Connection):
    """A Connection that remembers how many tries its last request took (the client
    library retries inside ``exchange`` and says so only in its log)."""

    tries = 0

    def _send(self, body: P.Request, tries: int) -> float:
        self.tries = tries
        return super()._send(body, tries)


class User:
    """One user's thread: its connection, its counters and its budget."""

    def __init__(self, name: str, others: list[str], history: History, stop: threading.Event,
                 until: float, max_writes: int, max_posts: int, servers: int,
                 rng: random.Random) -> None:
        self.name, self.others, self.history, self.stop = name, others, history, stop
        self.until, self.max_writes, self.max_posts = until, max_writes, max_posts
        self.servers, self.rng = servers, rng
        self.writes = self.posts = self.messages = 0
        config = load_config(request_deadline=REQUEST_DEADLINE)
        self.conn = CountingConnection(config, name, LamportClock(), PhysicalClock())

    def run(self) -> None:
        try:
            self.log_in()
            self.history.add({"user": self.name, "op": "ready", "t": time.time()})
            while not self.stop.is_set() and time.time() < self.until \
                    and self.writes < self.max_writes:
                self.act()
                self.stop.wait(self.rng.uniform(0, 2 * PAUSE))
        except BaseException as exc:      # noqa: BLE001 - recorded: the run reports it
            self.history.add({"user": self.name, "op": "crashed", "t": time.time(),
                              "error": f"{type(exc).__name__}: {exc}"})
        finally:
            self.history.add({"user": self.name, "op": "stopped", "t": time.time(),
                              "writes": self.writes})
            self.conn.close()

    def log_in(self) -> None:
        token = secrets.token_urlsafe(32)
        deadline = time.time() + 30
        while True:
            try:
                try:
                    self.conn.request(P.OP_LOGIN, {"password": PASSWORD}, token=token)
                except ClientError as exc:
                    if exc.code != P.ERR_NO_ACCOUNT:
                        raise
                    self.conn.request(P.OP_REGISTER, {"password": PASSWORD})
                    self.conn.request(P.OP_LOGIN, {"password": PASSWORD}, token=token)
                self.conn.token = token
                return
            except ClientError:
                if time.time() >= deadline or self.stop.is_set():
                    raise
                self.stop.wait(0.2)       # the cluster is not taking logins yet: again

    def act(self) -> None:
        ops, weights = zip(*OPS)
        op = self.rng.choices(ops, weights)[0]
        if op == P.OP_POST and self.posts >= self.max_posts:
            op = P.OP_DM
        other = self.rng.choice(self.others)
        record: dict = {"user": self.name, "op": op, "pinned": None}
        if op == P.OP_POST:
            record["text"] = f"{self.name} post {self.posts}"
            args = {"text": record["text"]}
            self.posts += 1
        elif op == P.OP_DM:
            record.update(to=other, text=f"{self.name} to {other} {self.messages}")
            args = {"to": other, "text": record["text"]}
            self.messages += 1
        elif op == P.OP_FOLLOW:
            record["target"] = other
            args = {"target": other}
        elif op == P.OP_FEED:
            args = {"limit": READ_LIMIT}
        elif op == P.OP_CHAT:
            record["with"] = other
            args = {"with": other, "limit": READ_LIMIT}
        else:
            args = {}
        if op in P.READ_OPS and self.rng.random() < PINNED_SHARE:
            record["pinned"] = self.rng.randint(1, self.servers)
        self.writes += op in P.WRITE_OPS
        self.send(op, args, record)

    def send(self, op: str, args: dict, record: dict) -> None:
        body = self.conn.build(op, args, record["pinned"])
        record.update(rid=body.rid, sent=time.time())
        try:
            result = self.conn.exchange(body)
        except ClientError as exc:
            record.update(replied=time.time(), ok=False, code=exc.code, error=exc.message[:200],
                          tries=self.conn.tries)
            self.history.add(record)
            return
        record.update(replied=time.time(), ok=True, code=None, tries=self.conn.tries,
                      replicas=result.get("replicas"), server=result.get("server"))
        view = result.get("post") or result.get("message") or result.get("follow")
        if view is not None:
            record.update(id=view.get("id"), lamport=view.get("lamport"),
                          ts=view.get("timestamp"))
        if op == P.OP_FEED:
            record["seen"] = [p["id"] for p in result["posts"]]
        elif op == P.OP_CHAT:
            record["seen"] = [m["id"] for m in result["messages"]]
        elif op == P.OP_FOLLOWING:
            record["seen"] = list(result["following"])
        self.history.add(record)


app = typer.Typer(add_completion=False)


@app.command()
def main(history: Path = typer.Option(..., "--history"),
         users: str = typer.Option(..., "--users", help="Comma-separated user names."),
         seconds: float = typer.Option(60.0, "--seconds", min=1.0),
         max_writes: int = typer.Option(1000, "--max-writes", min=1, help="Writes per user at most."),
         servers: int = typer.Option(3, "--servers", min=1, max=99),
         seed: Optional[int] = typer.Option(None, "--seed")) -> None:
    names = users.split(",")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    out = History(history)
    rng = random.Random(seed)
    until = time.time() + seconds
    max_posts = (READ_LIMIT - 100) // len(names)      # every post fits in one feed read
    threads = []
    for name in names:
        user = User(name, [n for n in names if n != name], out, stop, until, max_writes,
                    max_posts, servers, random.Random(rng.random()))
        threads.append(threading.Thread(target=user.run, name=name, daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:        # each request ends by its deadline: so does every thread
        thread.join(seconds + 4 * REQUEST_DEADLINE + 30)
    out.close()


if __name__ == "__main__":
    app()
