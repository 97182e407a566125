"""What the demo sees of the system, and how it tells it.

* ``Watch``: the broker's ``status``, new lines of the servers' logs, and new
  records of the bots' reports (clients/demo/bots.py), all read without blocking.
* ``Activity``: what the bots did, from their reports -- every acknowledged
  write (for the final check), counts, and a narrated sample of it: the first
  follows, posts and the notifications they caused, messages and answers.
* ``BerkeleyRound``: one round, parsed from the coordinator's log line.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import orjson
import zmq

from common import log_lines as LL
from common.broker_client import BrokerClient
from common.keys import cluster_broker_key
from common.cluster_status import rows_by_id
from common.config import Config
from common.timeline import Entry, FileTail, LogFolder

STATUS_DEADLINE = 2.0
"""Seconds a status request may take before the demo moves on without it."""
ACTIVITY_EVERY = 5.0
"""Seconds between two lines summing up the bots' activity."""
TOLD = {"follow": 5, "unfollow": 2, "post": 3, "notified": 2, "dm": 2, "answer": 2}
"""How many of each kind of bot action the demo tells one by one; the rest is counted."""
WRITE_OPS = ("register", "post", "follow", "unfollow", "dm")


def report_path(log_dir: Path | str, user: str) -> Path:
    return Path(log_dir) / f"bot-{user}.jsonl"


class Watch:
    """The broker's status, the servers' new log lines, the bots' new records."""

    def __init__(self, config: Config, users: list[str]) -> None:
        self.ctx = zmq.Context()
        self.ctx.linger = 0
        self.broker = BrokerClient(self.ctx, config.endpoint(config.frontend_port),
                                   cluster_broker_key(config.data_dir))
        self.server_logs = LogFolder(config.log_dir, "server-*.log")
        self.reports = [FileTail(report_path(config.log_dir, user)) for user in users]

    def status(self) -> dict | None:
        return self.broker.status(STATUS_DEADLINE)

    def rows(self) -> dict[int, dict]:
        """Status rows by server id (empty if the broker does not answer)."""
        return rows_by_id(self.status())

    def server_lines(self) -> list[Entry]:
        return sorted(self.server_logs.read_new())

    def records(self) -> list[dict]:
        out = []
        for tail in self.reports:
            for line in tail.read_lines():
                try:
                    out.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    continue
        return sorted(out, key=lambda r: r.get("t", 0))

    def close(self) -> None:
        self.broker.close()
        self.ctx.term()


# --- Berkeley rounds, from the coordinator's log ------------------------------------------
ROUND_RE = LL.pattern(LL.ROUND)
OFFSET_RE = re.compile(r"s(\d+)=([+-]?\d+(?:\.\d+)?)ms")


@dataclass(frozen=True)
class BerkeleyRound:
    coordinator: str
    number: int
    epoch: int
    readings: dict[int, float]      # ms, each server's clock minus the coordinator's
    excluded: tuple[int, ...]
    corrections: dict[int, float]   # ms

    @classmethod
    def parse(cls, entry: Entry) -> "BerkeleyRound | None":
        m = ROUND_RE.search(entry.rest)
        if m is None:
            return None
        return cls(entry.process, int(m["number"]), int(m["epoch"]), _offsets(m["readings"]),
                   tuple(int(sid) for sid, _ in OFFSET_RE.findall(m["excluded"])),
                   _offsets(m["corrections"]))

    def describe(self) -> list[str]:
        left_out = (f"; left out as outliers: {', '.join(f's{sid}' for sid in self.excluded)}"
                    if self.excluded else "")
        return [f"Berkeley round {self.number} by {self.coordinator} (epoch {self.epoch}): "
                f"clocks read against its own: {_ms_list(self.readings)}{left_out}",
                f"   averaged, and each server sent its own correction: "
                f"{_ms_list(self.corrections)}"]


def _offsets(text: str) -> dict[int, float]:
    return {int(sid): float(ms) for sid, ms in OFFSET_RE.findall(text)}


def _ms_list(values: dict[int, float]) -> str:
    return ", ".join(f"s{sid} {ms:+.1f} ms" for sid, ms in sorted(values.items()))


def skew_line(rows: dict[int, dict]) -> str:
    """Each live server's clock minus the host's (ground truth on one machine), and the spread."""
    skews = {sid: row["clock_skew_ms"] for sid, row in sorted(rows.items())
             if row.get("alive") and isinstance(row.get("clock_skew_ms"), (int, float))}
    if not skews:
        return "no clock readings"
    spread = max(skews.values()) - min(skews.values())
    return (", ".join(f"s{sid} {ms:+.1f} ms" for sid, ms in skews.items())
            + f" -> spread {spread:.1f} ms")


class ChaosJumps:
    """The servers' chaos clock jumps (``log_lines.CHAOS_JUMP``) and the last Berkeley
    round, both from the servers' logs: which jumps came after the round, in Lamport
    order (a clock the round set, then moved again)."""

    def __init__(self) -> None:
        self.round_lamport = 0
        self.jumps: list[tuple[int, str, str]] = []       # (L=, server, ms)

    def round_at(self, lamport: int) -> None:
        self.round_lamport = max(self.round_lamport, lamport)

    def note(self, entry: Entry) -> None:
        jump = LL.parse(LL.CHAOS_JUMP, entry.rest)
        if jump is not None:
            self.jumps.append((entry.lamport, entry.process, jump["jump_ms"]))

    def since_round(self) -> list[str]:
        """``server-2 -120.5 ms`` for each jump logged after the last round."""
        return [f"{server} {ms} ms" for lamport, server, ms in self.jumps
                if lamport > self.round_lamport]


def clock_spread(rows: dict[int, dict]) -> float | None:
    skews = [row["clock_skew_ms"] for row in rows.values()
             if row.get("alive") and isinstance(row.get("clock_skew_ms"), (int, float))]
    return max(skews) - min(skews) if skews else None


# --- what the bots did ------------------------------------------------------------------------
class Activity:
    """The bots' records: every acknowledged write, counts, and a narrated sample."""

    def __init__(self, say: Callable[[str], None], replicas: int) -> None:
        self.say = say
        self.replicas = replicas
        self.acks: list[dict] = []
        self.errors: list[dict] = []
        self.ready: set[str] = set()
        self.stopped: set[str] = set()
        self.following: dict[str, set[str]] = {}      # as the acks say, in order
        self.uncertain: set[tuple[str, str]] = set()  # follows whose fate is unknown
        self.totals: Counter = Counter()
        self._window: Counter = Counter()
        self._window_start = time.monotonic()
        self._told: Counter = Counter()
        self._told_posts: set[str] = set()

    def add(self, record: dict) -> None:
        op = record.get("op")
        self.totals[op] += 1
        self._window[op] += 1
        if op in WRITE_OPS:
            self.acks.append(record)
        handler = getattr(self, f"_on_{op}", None)
        if handler is not None:
            handler(record)

    def acked(self) -> int:
        return len(self.acks)

    # --- each kind of record ----------------------------------------------------------
    def _on_ready(self, r: dict) -> None:
        if not self.ready:
            self._window, self._window_start = Counter(), time.monotonic()
        self.ready.add(r["user"])

    def _on_stopped(self, r: dict) -> None:
        self.stopped.add(r["user"])

    def _on_error(self, r: dict) -> None:
        self.errors.append(r)
        if r.get("uncertain") and r.get("target"):
            self.uncertain.add((r["user"], r["target"]))
        self.say(f"!! {r['user']}: {r.get('action')} failed: {r.get('code')}: {r.get('error')}")

    def _on_follow(self, r: dict) -> None:
        self.following.setdefault(r["user"], set()).add(r["target"])
        if self._tell("follow"):
            self.say(f"{r['user']} follows {r['target']}: a write, made an event by "
                     f"server-{r['server']} and acknowledged once {r['replicas']} servers "
                     f"held it{self._few(r)} (L={r['lamport']})")

    def _on_unfollow(self, r: dict) -> None:
        self.following.setdefault(r["user"], set()).discard(r["target"])
        if self._tell("unfollow"):
            self.say(f"{r['user']} unfollows {r['target']} (L={r['lamport']}): "
                     f"{r['target']}'s next posts will not reach {r['user']}")

    def _on_post(self, r: dict) -> None:
        if not self._tell("post"):
            return
        self._told_posts.add(r["id"])
        fans = sorted(u for u, targets in self.following.items() if r["user"] in targets)
        who = (f"its followers ({', '.join(fans)}) will be notified" if fans
               else "nobody follows them yet, so nobody is notified")
        self.say(f"{r['user']} posts {r['text']!r} (L={r['lamport']}, held by "
                 f"{r['replicas']} servers{self._few(r)}): {who}")

    def _on_notified(self, r: dict) -> None:
        if r.get("id") in self._told_posts or self._tell("notified"):
            self.say(f"   -> {r['user']} is notified live of {r.get('author')}'s post "
                     f"{r.get('text')!r} (L={r.get('lamport')}): its listen long poll "
                     f"was answered by server-{r.get('server')}")

    def _on_dm(self, r: dict) -> None:
        if r.get("answer_to"):
            if self._tell("answer"):
                self.say(f"{r['user']} answers {r['to']}: {r['text']!r} (L={r['lamport']}, "
                         f"after the question it answers)")
        elif self._tell("dm"):
            self.say(f"{r['user']} -> {r['to']}, in private: {r['text']!r} (L={r['lamport']})")

    def _few(self, r: dict) -> str:
        """Why a write was acknowledged with fewer copies than asked."""
        if isinstance(r.get("replicas"), int) and r["replicas"] < self.replicas:
            return f", every live one: fewer than {self.replicas} are serving"
        return ""

    def _tell(self, kind: str) -> bool:
        if self._told[kind] >= TOLD[kind]:
            return False
        self._told[kind] += 1
        return True

    # --- the periodic summary ----------------------------------------------------------
    def summary_due(self, now: float) -> bool:
        return now - self._window_start >= ACTIVITY_EVERY

    def summarize(self, now: float) -> str:
        w, seconds = self._window, now - self._window_start
        self._window, self._window_start = Counter(), now
        return (f"users, last {seconds:.0f} s: {w['post']} posts, {w['dm']} messages, "
                f"{w['follow']} follows, {w['unfollow']} unfollows, "
                f"{w['notified'] + w['received']} items pushed by listen, {w['error']} errors; "
                f"{self.acked()} writes acknowledged so far")
