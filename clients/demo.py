"""``python run_all.py demo``: the whole system at work, narrated, in under a minute.

The demo starts a broker and servers with clock chaos on, in folders of its
own, and bot users (``clients/bots.py``, one process each) that act on their
own. While they follow, post, listen and talk, it puts the cluster through
what it is built to survive, one step at a time, saying what happens and why:

1. the cluster starts: each server joins, syncs and serves; Berkeley sets the clocks;
2. the users register and start acting: follows, posts and their notifications;
3. the coordinator is killed with SIGKILL and a new one elected;
4. a new server joins and catches up;
5. the killed server comes back on its old data and fetches only what it missed;
6. a server is removed with SIGTERM while users keep writing;
7. a private conversation, the same in order on every server;
8. the check: every write a bot got an acknowledgment for is on every live
   server (reads pinned to each), and a summary table.

Berkeley rounds are told as the coordinator logs them throughout. Every
process the demo starts is stopped before it returns (``try``/``finally``),
and its pid is written to ``demo-pids.txt`` in the log folder first.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from clients.connection import ClientError, Connection
from clients.demo_watch import (Activity, BerkeleyRound, Watch, clock_spread, report_path,
                                skew_line)
from common import protocol as P
from common.clock import LamportClock, PhysicalClock
from common.config import Config, load_config
from common.processes import ProcessGroup, wait_until
from common.timeline import Entry, FileTail

BOT_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
             "judy", "mallory", "oscar")
PID_FILE = "demo-pids.txt"
TAIL_SECONDS = 9.0
"""Seconds kept at the end for stopping the bots, the check and the clean-up."""
MIN_ACTIVITY = 6.0
"""The bots act for at least this long, however short ``--seconds``."""
STEP_AT = (0.15, 0.35, 0.55, 0.70)
"""When the kill, join, return and removal start, as fractions of the bots' time."""
OFFSET_SPREAD = 0.8
"""The servers' clocks start spread evenly over ±this many seconds."""
NEWCOMER_OFFSET = 0.9
PUMP = 0.1
"""Seconds between two looks at the logs, reports and status while waiting."""
ROUND_EVERY = 9.0
"""Seconds between two Berkeley rounds told (the first of each coordinator is always)."""
READ_LIMIT = P.MAX_LIMIT
AFTER_ROUND = 0.4
"""Seconds after a round's log line that status is read to show its effect."""
CHAOS_NOTE_MS = 50.0
"""A spread this wide right after a round means a chaos jump came in between."""


CLAIM_RE = re.compile(r"I am coordinator \(epoch (\d+)\)")
SILENCE_RE = re.compile(r"coordinator s\d+ silent for \S+")
"""Lines of servers/election.py's log: a won election, a coordinator found silent."""


class DemoError(Exception):
    """The demo cannot go on (the cluster did not start)."""


@dataclass
class Check:
    acked: dict[str, int]                    # kind -> acknowledged writes
    missing: dict[int, set[str]]             # server -> acked write ids it lacks
    digests: dict[int, str]
    events: dict[int, int]

    @property
    def lost(self) -> int:
        return len(set().union(*self.missing.values())) if self.missing else 0

    @property
    def converged(self) -> bool:
        return len(set(self.digests.values())) == 1


@dataclass
class Servers:
    """What the demo did to which server."""
    offsets: dict[int, float] = field(default_factory=dict)
    fate: dict[int, str] = field(default_factory=dict)


class DemoProcesses(ProcessGroup):
    """The demo's processes; each pid is written to the pid file as it starts."""

    def __init__(self, config: Config, env_extra: dict, pid_file: Path) -> None:
        super().__init__(config, env_extra)
        self.pid_file = pid_file

    def _start(self, name: str, args: list[str]):
        proc = super()._start(name, args)
        with open(self.pid_file, "a") as f:
            f.write(f"{name} {proc.pid}\n")
        return proc

    def start_bot(self, user: str, *args: str):
        return self._start(f"bot-{user}", ["clients.bots", "--user", user, *args])


class Demo:
    """One run of the demo: its processes, what it has seen, and its steps."""

    def __init__(self, config: Config, seconds: float, servers: int, users: int,
                 out: TextIO = sys.stdout) -> None:
        self.config = config
        self.seconds = seconds
        self.server_count = servers
        self.users = list(BOT_NAMES[:users])
        self.out = out
        self.t0 = time.monotonic()
        self.log_dir = Path(config.log_dir)
        self.pid_file = self.log_dir / PID_FILE
        self.group = DemoProcesses(config, {"SOCIAL_CLOCK_CHAOS": "1"}, self.pid_file)
        self.watch = Watch(config, self.users)
        self.activity = Activity(self.say, config.replicas)
        self.servers = Servers()
        self.rounds: list[BerkeleyRound] = []
        self.coordinators: list[tuple[str, int]] = []    # (server, epoch) of each claim
        self._round_told_at = -ROUND_EVERY
        self._epochs_told: set[int] = set()
        self._after_round_at: float | None = None
        self._readers: dict[str, Connection] = {}
        self.killed: int | None = None
        self.problems: list[str] = []

    # --- telling ---------------------------------------------------------------------------
    def say(self, text: str) -> None:
        self.out.write(f"[{time.monotonic() - self.t0:5.1f}s] {text}\n")
        self.out.flush()

    def section(self, title: str) -> None:
        self.out.write(f"\n== {title} ==\n")
        self.out.flush()

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.say(f"!! {text}")

    # --- looking while waiting --------------------------------------------------------------
    def pump(self) -> None:
        """Take in new server log lines and bot records; tell what deserves it."""
        for entry in self.watch.server_lines():
            self.on_server_line(entry)
        for record in self.watch.records():
            self.activity.add(record)
        now = time.monotonic()
        if self._after_round_at is not None and now >= self._after_round_at:
            self._after_round_at = None
            rows = self.watch.rows()
            jumped = (clock_spread(rows) or 0) > CHAOS_NOTE_MS
            self.say(f"   after the round, each clock minus the host's: {skew_line(rows)}"
                     + (" (a chaos jump since; the next round pulls it back)" if jumped else ""))
        if self.activity.ready and self.activity.summary_due(now):
            self.say(self.activity.summarize(now))

    def on_server_line(self, entry: Entry) -> None:
        if "berkeley round" in entry.rest:
            r = BerkeleyRound.parse(entry)
            if r is not None:
                self.rounds.append(r)
                self.tell_round(r)
        elif (claim := CLAIM_RE.search(entry.rest)) is not None:
            self.coordinators.append((entry.process, int(claim[1])))
        elif (silence := SILENCE_RE.search(entry.rest)) is not None:
            self.say(f"{entry.process}: {silence[0]}: it calls an election")

    def tell_round(self, r: BerkeleyRound) -> None:
        now = time.monotonic()
        if r.epoch in self._epochs_told and now - self._round_told_at < ROUND_EVERY:
            return
        self._epochs_told.add(r.epoch)
        self._round_told_at = now
        for line in r.describe():
            self.say(line)
        self._after_round_at = now + AFTER_ROUND   # a heartbeat later, status shows the result

    def idle(self, until: float) -> None:
        while time.monotonic() < until:
            self.pump()
            time.sleep(PUMP)

    def wait(self, condition: Callable, timeout: float, what: str):
        def look():
            self.pump()
            return condition()
        return wait_until(look, timeout, interval=PUMP, what=what)

    # --- the cluster ------------------------------------------------------------------------
    def start_cluster(self) -> None:
        cfg = self.config
        self.section("1. The cluster starts")
        self.say(f"broker: clients connect to :{cfg.frontend_port} (ROUTER), servers to "
                 f":{cfg.backend_port} (ROUTER); the servers' bus is :{cfg.bus_in_port} (XSUB) "
                 f"-> :{cfg.bus_out_port} (XPUB)")
        self.group.start_broker()
        try:
            self.wait(lambda: self.watch.status() is not None, 10, "the broker to answer")
        except TimeoutError:
            raise DemoError(f"the broker does not answer on :{cfg.frontend_port}; is the port "
                            f"taken? (--port-base)") from None
        ids = list(range(1, self.server_count + 1))
        for sid in ids:
            offset = -OFFSET_SPREAD + 2 * OFFSET_SPREAD * (sid - 1) / (len(ids) - 1)
            self.start_server(sid, offset)
        self.say("each server listens on the bus to learn its peers (joining), pulls what "
                 "they hold and gets its clock set (syncing), then tells the broker READY "
                 "(serving)")
        try:
            self.follow_phases(ids, 30)
        except TimeoutError as exc:
            raise DemoError(str(exc)) from None
        status = self.watch.status() or {}
        self.say(f"all {len(ids)} servers serving; the bully election made server-"
                 f"{status.get('coordinator')} coordinator (the highest id; epoch "
                 f"{status.get('epoch')}), and it runs a Berkeley round every "
                 f"{cfg.berkeley_interval:g} s")
        self.say("Berkeley brings the servers' clocks to their average, not to the true "
                 "time: right after a round they agree within milliseconds, while chaos "
                 "moves them all, and their average, away from the host's clock")

    def start_server(self, sid: int, offset: float) -> None:
        self.servers.offsets[sid] = offset
        self.servers.fate.setdefault(sid, "")
        self.group.start_server(sid, "--clock-offset", f"{offset:.3f}")
        self.say(f"server-{sid} starts (peer port :{self.config.peer_port(sid)}), its clock "
                 f"{offset * 1000:+.0f} ms off and jumping by up to ±1 s at random (chaos)")

    def follow_phases(self, ids: list[int], timeout: float) -> dict[int, dict]:
        """Tell each phase change of servers ``ids`` (from status) until all serve."""
        seen: dict[int, str] = {}
        start = time.monotonic()

        def serving():
            rows = self.watch.rows()
            for sid in ids:
                row = rows.get(sid)
                if row is None or not row.get("alive"):
                    continue
                if seen.get(sid) != row.get("phase"):
                    seen[sid] = row["phase"]
                    self.say(f"server-{sid} is {row['phase']} ({row.get('events', 0)} events, "
                             f"{time.monotonic() - start:.1f} s after its start)")
            return rows if all(seen.get(sid) == "serving" for sid in ids) else None
        return self.wait(serving, timeout, f"servers {ids} serving")

    # --- the users ---------------------------------------------------------------------------
    def start_bots(self) -> None:
        self.section("2. The users arrive")
        peers = ",".join(self.users)
        max_posts = max(1, READ_LIMIT // (2 * len(self.users)))
        for n, user in enumerate(self.users):
            self.group.start_bot(user, "--peers", peers, "--seed", str(n),
                                 "--report", str(report_path(self.log_dir, user)),
                                 "--max-posts", str(max_posts))
        self.say(f"{len(self.users)} bot users start, each a process with its own Lamport "
                 f"clock and log: {', '.join(self.users)}")
        self.say("they follow, unfollow, post, send messages, and listen (a long poll the "
                 "servers answer as soon as a followed user posts or a message arrives)")
        try:
            self.wait(lambda: self.activity.ready >= set(self.users), 30, "the bots to register")
        except TimeoutError as exc:
            raise DemoError(str(exc)) from None
        self.say(f"all registered: {self.activity.acked()} writes acknowledged so far")

    def stop_bots(self) -> None:
        self.section("7. The users stop")
        for user in self.users:
            self.group.signal(f"bot-{user}", signal.SIGTERM)
        try:
            self.wait(lambda: not any(self.group.alive(f"bot-{u}") for u in self.users), 6,
                      "the bots to stop")
        except TimeoutError:
            self.problem("a bot did not stop on SIGTERM; killed")
            for user in self.users:
                if self.group.alive(f"bot-{user}"):
                    self.group.kill(f"bot-{user}")
        self.pump()
        self.say(f"bots stopped: {self.activity.acked()} writes acknowledged, "
                 f"{len(self.activity.errors)} errors")

    # --- the scenario ----------------------------------------------------------------------
    def scenario(self) -> None:
        start = time.monotonic()
        end = max(self.t0 + self.seconds - TAIL_SECONDS, start + MIN_ACTIVITY)
        steps = (self.kill_coordinator, self.join_new_server, self.bring_back,
                 self.remove_server)
        for at, step in zip(STEP_AT, steps):
            self.idle(start + at * (end - start))
            try:
                step()
            except TimeoutError as exc:
                self.problem(str(exc))
        self.idle(max(end, time.monotonic() + 1.0))

    def live_ids(self) -> list[int]:
        return sorted(_serving(self.watch.rows()))

    def kill_coordinator(self) -> None:
        self.section("3. The coordinator is killed")
        status = self.watch.status() or {}
        old, epoch = status.get("coordinator"), status.get("epoch") or 0
        if old is None:
            raise TimeoutError("no coordinator to kill")
        self.killed = old
        self.say(f"server-{old} is the coordinator (epoch {epoch}): SIGKILL, no goodbye")
        self.say(f"the others hear no BEAT from it for {self.config.election_timeout:g} s and "
                 f"hold a bully election: a server that no higher id ANSWERs within "
                 f"{self.config.answer_timeout:g} s claims the next epoch")
        killed_at = time.monotonic()
        self.group.kill(f"server-{old}")
        self.servers.fate[old] = "killed (SIGKILL)"

        def elected():
            s = self.watch.status() or {}
            return s if s.get("coordinator") not in (None, old) and (s.get("epoch") or 0) > epoch \
                else None
        new = self.wait(elected, 15, "a new coordinator")
        self.say(f"server-{new['coordinator']} is the new coordinator (epoch {new['epoch']}), "
                 f"{time.monotonic() - killed_at:.1f} s after the kill (from status)")
        self.wait(lambda: not self.watch.rows().get(old, {}).get("alive"), 10,
                  f"the broker to drop server-{old}")
        self.say(f"the broker had dropped server-{old} from its pool "
                 f"{time.monotonic() - killed_at:.1f} s after the kill; requests it held were "
                 f"resent by the users' Lazy Pirate to others: a delay, not an error "
                 f"({len(self.activity.errors)} errors so far)")

    def join_new_server(self) -> None:
        self.section("4. A new server joins")
        sid = max(self.servers.offsets) + 1
        self.say(f"server-{sid} has an empty folder: it subscribes to the bus first, then "
                 f"pulls every event from a peer (FETCH -> EVENTS, in batches), and joins "
                 f"the pool only when it holds what the others held when it arrived")
        started = time.monotonic()
        self.start_server(sid, NEWCOMER_OFFSET)
        rows = self.follow_phases([sid], 30)
        self.servers.fate[sid] = "joined"
        self.say(f"server-{sid} serving {time.monotonic() - started:.1f} s after its start, "
                 f"holding {rows[sid].get('events')} events")
        self.say(f"server-{sid} has the highest id: it calls an election at start and, "
                 f"by the bully rule, takes over")
        status = self.wait(lambda: (lambda s: s if s.get("coordinator") == sid else None)(
            self.watch.status() or {}), 10, f"server-{sid} coordinator")
        self.say(f"server-{sid} is coordinator (epoch {status['epoch']})")

    def bring_back(self) -> None:
        sid = self.killed
        if sid is None:
            raise TimeoutError("no killed server to bring back")
        self.section(f"5. server-{sid} comes back on its old data")
        log = self.config.log_path(f"server-{sid}")
        tail = FileTail(log, log.stat().st_size if log.exists() else 0)
        started = time.monotonic()
        self.start_server(sid, self.servers.offsets[sid])
        rows = self.follow_phases([sid], 30)
        self.servers.fate[sid] = "killed, back"
        reloaded, fetched = _catch_up(tail.read_lines())
        self.say(f"server-{sid} serving {time.monotonic() - started:.1f} s after its restart: it "
                 f"reloaded {reloaded} events from its disk, fetched from a peer only the "
                 f"{fetched} it had missed, and takes new ones from the bus "
                 f"({rows[sid].get('events')} now)")

    def remove_server(self) -> None:
        self.section("6. A server is removed while users keep writing")
        status = self.watch.status() or {"servers": []}
        rows = _serving({row["id"]: row for row in status["servers"]})
        candidates = [s for s in sorted(rows) if s != status.get("coordinator")]
        if not candidates:
            raise TimeoutError("no server to remove but the coordinator")
        sid = candidates[0]
        acked, errors = self.activity.acked(), len(self.activity.errors)
        self.say(f"SIGTERM to server-{sid}: it tells the broker LEAVE (out of the pool at "
                 f"once) and the bus BYE, answers what it holds, and exits")
        started = time.monotonic()
        code = self.group.terminate(f"server-{sid}", timeout=3.0)
        self.servers.fate[sid] = "removed (SIGTERM)"
        self.say(f"server-{sid} exited with code {code} after {time.monotonic() - started:.2f} s")
        self.idle(time.monotonic() + 1.5)
        self.say(f"meanwhile the users went on: +{self.activity.acked() - acked} writes "
                 f"acknowledged, +{len(self.activity.errors) - errors} errors")

    # --- the checks ---------------------------------------------------------------------------
    def reader(self, user: str) -> Connection:
        conn = self._readers.get(user)
        if conn is None:
            conn = Connection(self.config, user, LamportClock(), PhysicalClock())
            self._readers[user] = conn
        return conn

    def show_conversation(self) -> None:
        pairs = defaultdict(int)
        for r in self.activity.acks:
            if r["op"] == "dm":
                pairs[tuple(sorted((r["user"], r["to"])))] += 1
        if not pairs:
            self.say("nobody sent a private message")
            return
        a, b = max(pairs, key=pairs.get)
        chats = {sid: self.reader(a).request(P.OP_CHAT, {"with": b, "limit": READ_LIMIT},
                                             server=sid)["messages"]
                 for sid in self.live_ids()}
        first = next(iter(chats.values()))
        self.say(f"the conversation of {a} and {b}, oldest first (ordered by Lamport stamp, "
                 f"then id), as server-{next(iter(chats))} returns it:")
        for m in first[-8:]:
            self.say(f"   [L={m['lamport']}] {m['from']} -> {m['to']}: {m['text']}")
        same = all(chat == first for chat in chats.values())
        self.say(f"servers {', '.join(map(str, chats))} return it in the same order: "
                 f"{'yes' if same else 'NO'}")
        if not same:
            self.problem("servers disagree on a conversation")

    def converge(self) -> dict[int, dict]:
        """Rows of the live servers, sent after now, once they all hold the same events."""
        start = {sid: row.get("lamport", -1) for sid, row in self.watch.rows().items()}

        def equal():
            rows = _serving(self.watch.rows())
            fresh = all(row.get("lamport", -1) > start.get(sid, -1) for sid, row in rows.items())
            same = len({(row.get("digest"), row.get("events")) for row in rows.values()}) == 1
            return rows if rows and fresh and same else None
        try:
            return self.wait(equal, 15, "equal digests")
        except TimeoutError as exc:
            self.problem(str(exc))
            return _serving(self.watch.rows())

    def check(self, rows: dict[int, dict]) -> Check:
        """Every acknowledged write, looked up on every live server with pinned reads."""
        acks = self.activity.acks
        acked = defaultdict(int)
        for r in acks:
            acked[r["op"]] += 1
        posts = {r["id"] for r in acks if r["op"] == "post"}
        chats = defaultdict(set)
        for r in acks:
            if r["op"] == "dm":
                chats[tuple(sorted((r["user"], r["to"])))].add(r["id"])
        missing = {}
        for sid in rows:
            missing[sid] = self.missing_on(sid, posts, chats)
        return Check(dict(acked), missing, {s: r.get("digest") for s, r in rows.items()},
                     {s: r.get("events") for s, r in rows.items()})

    def missing_on(self, sid: int, posts: set[str], chats: dict) -> set[str]:
        """Ids of acknowledged writes server ``sid`` does not show."""
        reader = self.reader(self.users[0])
        missing = set()
        users = set(reader.request(P.OP_USERS, {}, server=sid)["users"])
        missing |= {f"register:{u}" for u in self.activity.ready if u not in users}
        feed = reader.request(P.OP_FEED, {"limit": READ_LIMIT}, server=sid)["posts"]
        missing |= posts - {p["id"] for p in feed}
        for (a, b), ids in chats.items():
            chat = self.reader(a).request(P.OP_CHAT, {"with": b, "limit": READ_LIMIT},
                                          server=sid)["messages"]
            missing |= ids - {m["id"] for m in chat}
        for user in self.users:
            follows = set(self.reader(user).request(P.OP_FOLLOWING, {}, server=sid)["following"])
            expected = self.activity.following.get(user, set())
            for target in (follows ^ expected):
                if (user, target) not in self.activity.uncertain:
                    missing.add(f"follow:{user}->{target}")
        return missing

    def clocks_after_round(self) -> tuple[BerkeleyRound | None, dict[int, dict]]:
        """The next Berkeley round, and status rows sent after it (the clocks it set)."""
        seen = len(self.rounds)
        try:
            self.wait(lambda: len(self.rounds) > seen, self.config.berkeley_interval + 3,
                      "a Berkeley round")
        except TimeoutError:
            return None, _serving(self.watch.rows())
        start = {sid: row.get("lamport", -1) for sid, row in self.watch.rows().items()}

        def fresh():
            rows = _serving(self.watch.rows())
            return rows if all(r.get("lamport", -1) > start.get(s, -1)
                               for s, r in rows.items()) else None
        try:
            return self.rounds[-1], self.wait(fresh, 3, "fresh status rows")
        except TimeoutError:
            return self.rounds[-1], _serving(self.watch.rows())

    # --- the summary -------------------------------------------------------------------------
    def summary(self, check: Check, rows: dict[int, dict], last_round: BerkeleyRound | None,
                clocks: dict[int, dict]) -> None:
        self.section("Summary")
        self.summary_table(check, rows, clocks)
        total = sum(check.acked.values())
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(check.acked.items()))
        claims = ", ".join(f"{p} (epoch {e})" for p, e in self.coordinators)
        spread = clock_spread(clocks)
        after = (f"right after Berkeley round {last_round.number} by {last_round.coordinator}"
                 if last_round else "now")
        facts = [
            ("digests equal", f"{'yes' if check.converged else 'NO'} "
                              f"({len(check.digests)} live servers)"),
            ("clock spread", f"{spread:.1f} ms {after} (max - min of clock - host)"
             if spread is not None else "unknown"),
            ("elections held", f"{len(self.coordinators)}: {claims}"),
            ("berkeley rounds", str(len(self.rounds))),
            ("writes acknowledged", f"{total} ({kinds})"),
            ("writes lost", f"{check.lost}"),
            ("user errors", str(len(self.activity.errors))),
            ("logs", f"{shown(self.log_dir)}/ (broker.log, server-N.log, client-USER.log; "
                     f"bot reports bot-USER.jsonl)"),
            ("timeline", f"python run_all.py timeline --log-dir {shown(self.log_dir)}"),
            ("data", f"{shown(self.config.data_dir)}/"),
        ]
        width = max(len(key) for key, _ in facts)
        self.out.write("\n" + "".join(f"{key.ljust(width)} : {value}\n" for key, value in facts))
        self.out.flush()

    def summary_table(self, check: Check, rows: dict[int, dict], clocks: dict[int, dict]) -> None:
        """One row per server the demo started: its state, holdings and clock."""
        header = ("server", "state", "events", "digest", "clock - host", "acked writes held")
        total = sum(check.acked.values())
        table = []
        for sid, fate in sorted(self.servers.fate.items()):
            row = rows.get(sid)
            if row is None:
                table.append((f"server-{sid}", fate, "-", "-", "-", "-"))
                continue
            skew = clocks.get(sid, row).get("clock_skew_ms")
            table.append((f"server-{sid}", "serving" + (f" ({fate})" if fate else ""),
                          str(row.get("events")), str(row.get("digest"))[:12],
                          f"{skew:+.1f} ms" if isinstance(skew, (int, float)) else "-",
                          f"{total - len(check.missing.get(sid, ()))}/{total}"))
        widths = [max(len(line[i]) for line in [header, *table]) for i in range(len(header))]
        for line in [header, tuple("-" * w for w in widths), *table]:
            self.out.write("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() + "\n")

    # --- the whole demo ----------------------------------------------------------------------
    def run(self) -> int:
        self.say(f"demo: a broker, {self.server_count} servers and {len(self.users)} users, "
                 f"clock chaos on, about {self.seconds:g} s; logs in {shown(self.log_dir)}/, "
                 f"data in {shown(self.config.data_dir)}/")
        try:
            self.start_cluster()
            self.start_bots()
            self.scenario()
            self.stop_bots()
            self.show_conversation()
            self.section("8. The check")
            rows = self.converge()
            check = self.check(rows)
            self.say(f"every acknowledged write looked up on servers "
                     f"{', '.join(map(str, sorted(rows)))} with reads pinned to each: "
                     f"{check.lost} missing")
            last_round, clocks = self.clocks_after_round()
            self.summary(check, rows, last_round, clocks)
            ok = check.lost == 0 and check.converged and not self.problems
            return 0 if ok else 1
        except DemoError as exc:
            self.problem(f"demo stopped: {exc}")
            return 1
        except ClientError as exc:
            self.problem(f"a check read failed: {exc}")
            return 1
        finally:
            self.clean_up()

    def clean_up(self) -> None:
        for conn in self._readers.values():
            conn.close()
        self.watch.close()
        self.group.stop_all(timeout=2.0)
        left = [name for name in self.group.procs if self.group.alive(name)]
        self.out.write(f"\nstopped every process the demo started ({len(self.group.procs)} "
                       f"names; pids in {shown(self.pid_file)}); still running: "
                       f"{', '.join(left) if left else 'none'}\n")
        self.out.flush()


def _serving(rows: dict[int, dict]) -> dict[int, dict]:
    return {sid: row for sid, row in rows.items()
            if row.get("alive") and row.get("phase") == "serving"}


def _catch_up(lines: list[str]) -> tuple[int, int]:
    """(events reloaded from disk, events fetched from peers) in a server's log lines."""
    reloaded = fetched = 0
    for line in lines:
        if "| started: " in line and " events reloaded" in line:
            reloaded = int(line.split("| started: ", 1)[1].split(" ", 1)[0])
        elif " events, " in line and " new, more=" in line:
            fetched += int(line.split(" events, ", 1)[1].split(" ", 1)[0])
    return reloaded, fetched


def demo_folders(data_dir: str | None, log_dir: str | None) -> tuple[str, str]:
    """Fresh folders for this run unless given: data/demo-<time>, logs/demo-<time>.

    Absolute, because the processes run in the project folder, not necessarily here."""
    stamp = time.strftime("demo-%Y%m%d-%H%M%S")
    for n in range(1, 100):                 # two demos started in one second
        name = stamp if n == 1 else f"{stamp}-{n}"
        data = Path(data_dir or Path("data") / name).resolve()
        logs = Path(log_dir or Path("logs") / name).resolve()
        if data_dir or log_dir or not (data.exists() or logs.exists()):
            break
    return str(data), str(logs)


def shown(path: Path | str) -> str:
    """A path as short as it can be said from here."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


def run_demo(seconds: float, servers: int, users: int, port_base: int | None = None,
             host: str | None = None, data_dir: str | None = None,
             log_dir: str | None = None) -> int:
    data_dir, log_dir = demo_folders(data_dir, log_dir)
    config = load_config(port_base=port_base, host=host, data_dir=data_dir, log_dir=log_dir)
    Path(log_dir).mkdir(parents=True, exist_ok=True)

    def interrupted(*_args):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)     # so that the clean-up runs
    demo = Demo(config, seconds, servers, users)
    try:
        return demo.run()
    except KeyboardInterrupt:
        return 130
