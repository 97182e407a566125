"""The end of the demo: the check that no acknowledged write was lost, and the summary.

Every write a bot got an acknowledgment for is looked up on every live server,
with reads pinned to each (``server``), once their digests agree; the busiest
private conversation is read from each server and compared; the summary shows
one row per server the demo started, and the run's facts.
"""
from __future__ import annotations

import secrets

from collections import Counter, defaultdict
from dataclasses import dataclass

from clients.connection import Connection
from clients.demo.narrator import Narrator, shown
from clients.demo.watch import BerkeleyRound, clock_spread
from common import protocol as P
from common.clock import LamportClock, PhysicalClock
from common.cluster_status import all_newer, lamports, same_events, serving
from common.config import Config

READ_LIMIT = P.MAX_LIMIT


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


class Verification:
    """The demo's check and summary, reading as the bot users from each live server."""

    def __init__(self, config: Config, users: list[str], narrator: Narrator,
                 passwords: dict[str, str]) -> None:
        self.config = config
        self.users = users
        self.passwords = passwords
        self.narrator = narrator
        self.activity = narrator.activity
        self.watch = narrator.watch
        self._readers: dict[str, Connection] = {}

    def run(self, fates: dict[int, str]) -> bool:
        """The conversation, the check (step 8) and the summary, given what the demo
        did to which server; True if no acknowledged write is missing and all agree."""
        self.show_conversation()
        self.narrator.section("8. The check")
        rows = self.converge()
        check = self.check(rows)
        self.narrator.say(f"every acknowledged write looked up on servers "
                          f"{', '.join(map(str, sorted(rows)))} with reads pinned to each: "
                          f"{check.lost} missing")
        last_round, clocks = self.clocks_after_round()
        self.summary(check, rows, last_round, clocks, fates)
        return check.lost == 0 and check.converged

    def reader(self, user: str) -> Connection:
        conn = self._readers.get(user)
        if conn is None:
            conn = Connection(self.config, user, LamportClock(), PhysicalClock())
            self._readers[user] = conn
            token = secrets.token_urlsafe(32)        # a session of its own, as the user
            conn.request(P.OP_LOGIN, {"password": self.passwords[user]}, token=token)
            conn.token = token
        return conn

    def chat(self, a: str, b: str, sid: int) -> list[dict]:
        """The conversation of ``a`` and ``b`` as server ``sid`` returns it."""
        return self.reader(a).request(P.OP_CHAT, {"with": b, "limit": READ_LIMIT},
                                      server=sid)["messages"]

    def close(self) -> None:
        for conn in self._readers.values():
            conn.close()

    # --- the checks ---------------------------------------------------------------------------
    def show_conversation(self) -> None:
        say = self.narrator.say
        pairs = defaultdict(int)
        for r in self.activity.acks:
            if r["op"] == "dm":
                pairs[tuple(sorted((r["user"], r["to"])))] += 1
        if not pairs:
            say("nobody sent a private message")
            return
        a, b = max(pairs, key=pairs.get)
        chats = {sid: self.chat(a, b, sid) for sid in sorted(serving(self.watch.rows()))}
        first = next(iter(chats.values()))
        say(f"the conversation of {a} and {b}, oldest first (ordered by Lamport stamp, "
            f"then id), as server-{next(iter(chats))} returns it:")
        for m in first[-8:]:
            say(f"   [L={m['lamport']}] {m['from']} -> {m['to']}: {m['text']}")
        same = all(chat == first for chat in chats.values())
        say(f"servers {', '.join(map(str, chats))} return it in the same order: "
            f"{'yes' if same else 'NO'}")
        if not same:
            self.narrator.problem("servers disagree on a conversation")

    def converge(self) -> dict[int, dict]:
        """Rows of the live servers, sent after now, once they all hold the same events."""
        start = lamports(self.watch.rows())

        def equal():
            rows = serving(self.watch.rows())
            return rows if rows and all_newer(rows, start) and same_events(rows) else None
        try:
            return self.narrator.wait(equal, 15, "equal digests")
        except TimeoutError as exc:
            self.narrator.problem(str(exc))
            return serving(self.watch.rows())

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
            missing |= ids - {m["id"] for m in self.chat(a, b, sid)}
        for user in self.users:
            follows = set(self.reader(user).request(P.OP_FOLLOWING, {}, server=sid)["following"])
            expected = self.activity.following.get(user, set())
            for target in (follows ^ expected):
                if (user, target) not in self.activity.uncertain:
                    missing.add(f"follow:{user}->{target}")
        return missing

    def clocks_after_round(self) -> tuple[BerkeleyRound | None, dict[int, dict]]:
        """The next Berkeley round, and status rows sent after it (the clocks it set)."""
        rounds = self.narrator.rounds
        seen = len(rounds)
        try:
            self.narrator.wait(lambda: len(rounds) > seen, self.config.berkeley_interval + 3,
                               "a Berkeley round")
        except TimeoutError:
            return None, serving(self.watch.rows())
        start = lamports(self.watch.rows())

        def fresh():
            rows = serving(self.watch.rows())
            return rows if all_newer(rows, start) else None
        try:
            return rounds[-1], self.narrator.wait(fresh, 3, "fresh status rows")
        except TimeoutError:
            return rounds[-1], serving(self.watch.rows())

    # --- the summary -------------------------------------------------------------------------
    def summary(self, check: Check, rows: dict[int, dict], last_round: BerkeleyRound | None,
                clocks: dict[int, dict], fates: dict[int, str]) -> None:
        self.narrator.section("Summary")
        self.summary_table(check, rows, clocks, fates)
        total = sum(check.acked.values())
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(check.acked.items()))
        coordinators = self.narrator.coordinators
        claims = ", ".join(f"{p} (epoch {e})" for p, e in coordinators)
        spread = clock_spread(clocks)
        after = (f"right after Berkeley round {last_round.number} by {last_round.coordinator}"
                 if last_round else "now")
        jumps = self.narrator.jumps.since_round() if last_round else []
        if jumps:                          # chaos moved a clock after the round set it
            after += f", then chaos jumps: {', '.join(jumps)}"
        log_dir = shown(self.config.log_dir)
        facts = [
            ("digests equal", f"{'yes' if check.converged else 'NO'} "
                              f"({len(check.digests)} live servers)"),
            ("clock spread", f"{spread:.1f} ms {after} (max - min of clock - host)"
             if spread is not None else "unknown"),
            ("elections held", f"{len(coordinators)}: {claims}"),
            ("berkeley rounds", str(len(self.narrator.rounds))),
            ("writes acknowledged", f"{total} ({kinds})"),
            ("acked with < 3 copies", self.few_copies()),
            ("writes lost", f"{check.lost}"),
            ("user errors", str(len(self.activity.errors))),
            ("logs", f"{log_dir}/ (broker.log, server-N.log, client-USER.log; "
                     f"bot reports bot-USER.jsonl)"),
            ("timeline", f"python run_all.py timeline --log-dir {log_dir}"),
            ("data", f"{shown(self.config.data_dir)}/"),
        ]
        width = max(len(key) for key, _ in facts)
        self.narrator.write("\n" + "".join(f"{key.ljust(width)} : {value}\n"
                                           for key, value in facts))

    def few_copies(self) -> str:
        """How many writes were acknowledged with fewer copies than asked, and why."""
        wanted = self.config.replicas
        few = Counter(r["replicas"] for r in self.activity.acks
                      if isinstance(r.get("replicas"), int) and r["replicas"] < wanted)
        if not few:
            return "0"
        counts = ", ".join(f"{n} with {copies}" for copies, n in sorted(few.items()))
        return (f"{sum(few.values())} ({counts}): while a server was killed or leaving, fewer "
                f"than {wanted} served; a write is acknowledged once every live server holds "
                f"it, never by fewer than a majority of the members")

    def summary_table(self, check: Check, rows: dict[int, dict], clocks: dict[int, dict],
                      fates: dict[int, str]) -> None:
        """One row per server the demo started: its state, holdings and clock."""
        header = ("server", "state", "events", "digest", "clock - host", "acked writes held")
        total = sum(check.acked.values())
        table = []
        for sid, fate in sorted(fates.items()):
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
        lines = [header, tuple("-" * w for w in widths), *table]
        self.narrator.write("".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                                    + "\n" for line in lines))
