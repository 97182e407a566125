"""``python run_all.py demo``: the whole system at work, narrated, in under a minute.

The demo starts a broker and servers with clock chaos on, in folders of its
own, and bot users (``clients/demo/bots.py``, one process each) that act on their
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

This module runs the scenario; ``clients/demo/narrator.py`` tells it (with what
``clients/demo/watch.py`` sees), and ``clients/demo/check.py`` checks and sums it up.
"""
from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from clients.connection import ClientError
from clients.demo.check import READ_LIMIT, Verification
from clients.demo.narrator import PUMP, Narrator, shown
from clients.demo.watch import report_path
from common.cluster_status import rows_by_id, serving, wait_serving
from common.config import DEFAULT_LOG_DIR, Config, load_config
from common.processes import ProcessGroup, new_run_folder, usable_port_base
from common.timeline import FileTail

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


class DemoError(Exception):
    """The demo cannot go on (the cluster did not start)."""


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

    def on_started(self, name: str, proc: subprocess.Popen) -> None:
        with open(self.pid_file, "a") as f:
            f.write(f"{name} {proc.pid}\n")

    def start_bot(self, user: str, password: str, *args: str) -> subprocess.Popen:
        """A bot, its password in its environment (never on a command line: ``ps`` shows those)."""
        return self.start(f"bot-{user}", ["clients.demo.bots", "--user", user, *args],
                          env={"SOCIAL_PASSWORD": password})


class Demo:
    """One run of the demo: its processes, what it did to them, and its steps."""

    def __init__(self, config: Config, seconds: float, servers: int, users: int,
                 out: TextIO = sys.stdout) -> None:
        self.config = config
        self.seconds = seconds
        self.server_count = servers
        self.users = list(BOT_NAMES[:users])
        self.passwords = {user: secrets.token_urlsafe(12) for user in self.users}
        self.narrator = Narrator(config, self.users, out)
        self.watch = self.narrator.watch
        self.activity = self.narrator.activity
        self.log_dir = Path(config.log_dir)
        self.pid_file = self.log_dir / PID_FILE
        self.group = DemoProcesses(config, {"SOCIAL_CLOCK_CHAOS": "1"}, self.pid_file)
        self.verification = Verification(config, self.users, self.narrator, self.passwords)
        self.servers = Servers()
        self.killed: int | None = None

    # --- the cluster ------------------------------------------------------------------------
    def start_cluster(self) -> None:
        cfg, say = self.config, self.narrator.say
        self.narrator.section("1. The cluster starts")
        say(f"broker: clients connect to :{cfg.frontend_port} (ROUTER), servers to "
            f":{cfg.backend_port} (ROUTER); the servers' bus is :{cfg.bus_in_port} (XSUB) "
            f"-> :{cfg.bus_out_port} (XPUB)")
        self.group.start_broker()
        try:
            self.narrator.wait(lambda: self.watch.status() is not None, 10,
                               "the broker to answer")
        except TimeoutError:
            raise DemoError(f"the broker does not answer on :{cfg.frontend_port}; is the port "
                            f"taken? (--port-base)") from None
        ids = list(range(1, self.server_count + 1))
        for sid in ids:
            offset = -OFFSET_SPREAD + 2 * OFFSET_SPREAD * (sid - 1) / (len(ids) - 1)
            self.start_server(sid, offset)
        say("each server listens on the bus to learn its peers (joining), pulls what "
            "they hold and gets its clock set (syncing), then tells the broker READY "
            "(serving)")
        try:
            self.follow_phases(ids, 30)
        except TimeoutError as exc:
            raise DemoError(str(exc)) from None
        status = self.watch.status() or {}
        say(f"all {len(ids)} servers serving; the bully election made server-"
            f"{status.get('coordinator')} coordinator (the highest id; epoch "
            f"{status.get('epoch')}), and it runs a Berkeley round every "
            f"{cfg.berkeley_interval:g} s")
        say("Berkeley brings the servers' clocks to their average, not to the true "
            "time: right after a round they agree within milliseconds, while chaos "
            "moves them all, and their average, away from the host's clock")

    def start_server(self, sid: int, offset: float) -> None:
        self.servers.offsets[sid] = offset
        self.servers.fate.setdefault(sid, "")
        self.group.start_server(sid, "--clock-offset", f"{offset:.3f}")
        self.narrator.say(f"server-{sid} starts (peer port :{self.config.peer_port(sid)}), its "
                          f"clock {offset * 1000:+.0f} ms off and jumping by up to ±1 s at "
                          f"random (chaos)")

    def follow_phases(self, ids: list[int], timeout: float) -> dict[int, dict]:
        """Tell each phase change of servers ``ids`` (from status) until all serve."""
        seen: dict[int, str] = {}
        start = time.monotonic()

        def rows_told():
            self.narrator.pump()
            rows = self.watch.rows()
            for sid in ids:
                row = rows.get(sid)
                if row is not None and row.get("alive") and seen.get(sid) != row.get("phase"):
                    seen[sid] = row["phase"]
                    self.narrator.say(f"server-{sid} is {row['phase']} ({row.get('events', 0)} "
                                      f"events, {time.monotonic() - start:.1f} s after its start)")
            return rows
        return wait_serving(rows_told, ids, timeout, interval=PUMP)

    # --- the users ---------------------------------------------------------------------------
    def start_bots(self) -> None:
        say = self.narrator.say
        self.narrator.section("2. The users arrive")
        peers = ",".join(self.users)
        max_posts = max(1, READ_LIMIT // (2 * len(self.users)))
        for n, user in enumerate(self.users):
            self.group.start_bot(user, self.passwords[user], "--peers", peers, "--seed", str(n),
                                 "--report", str(report_path(self.log_dir, user)),
                                 "--max-posts", str(max_posts))
        say(f"{len(self.users)} bot users start, each a process with its own Lamport "
            f"clock and log: {', '.join(self.users)}")
        say("each registers with a password drawn at random (the servers keep only its "
            "argon2id hash) and logs in: every request carries its session token")
        say("they follow, unfollow, post, send messages, and listen (a long poll the "
            "servers answer as soon as a followed user posts or a message arrives)")
        try:
            self.narrator.wait(lambda: self.activity.ready >= set(self.users), 30,
                               "the bots to register")
        except TimeoutError as exc:
            raise DemoError(str(exc)) from None
        say(f"all registered: {self.activity.acked()} writes acknowledged so far")

    def stop_bots(self) -> None:
        self.narrator.section("7. The users stop")
        for user in self.users:
            self.group.signal(f"bot-{user}", signal.SIGTERM)
        try:
            self.narrator.wait(lambda: not any(self.group.alive(f"bot-{u}") for u in self.users),
                               6, "the bots to stop")
        except TimeoutError:
            self.narrator.problem("a bot did not stop on SIGTERM; killed")
            for user in self.users:
                if self.group.alive(f"bot-{user}"):
                    self.group.kill(f"bot-{user}")
        self.narrator.pump()
        self.narrator.say(f"bots stopped: {self.activity.acked()} writes acknowledged, "
                          f"{len(self.activity.errors)} errors")

    # --- the scenario ----------------------------------------------------------------------
    def scenario(self) -> None:
        start = time.monotonic()
        end = max(self.narrator.t0 + self.seconds - TAIL_SECONDS, start + MIN_ACTIVITY)
        steps = (self.kill_coordinator, self.join_new_server, self.bring_back,
                 self.remove_server)
        for at, step in zip(STEP_AT, steps):
            self.narrator.idle(start + at * (end - start))
            try:
                step()
            except TimeoutError as exc:
                self.narrator.problem(str(exc))
        self.narrator.idle(max(end, time.monotonic() + 1.0))

    def kill_coordinator(self) -> None:
        say = self.narrator.say
        self.narrator.section("3. The coordinator is killed")
        status = self.watch.status() or {}
        old, epoch = status.get("coordinator"), status.get("epoch") or 0
        if old is None:
            raise TimeoutError("no coordinator to kill")
        self.killed = old
        say(f"server-{old} is the coordinator (epoch {epoch}): SIGKILL, no goodbye")
        say(f"the others hear no BEAT from it for {self.config.election_timeout:g} s and "
            f"hold a bully election: a server that no higher id ANSWERs within "
            f"{self.config.answer_timeout:g} s claims the next epoch")
        killed_at = time.monotonic()
        self.group.kill(f"server-{old}")
        self.servers.fate[old] = "killed (SIGKILL)"

        def elected():
            s = self.watch.status() or {}
            return s if s.get("coordinator") not in (None, old) and (s.get("epoch") or 0) > epoch \
                else None
        new = self.narrator.wait(elected, 15, "a new coordinator")
        say(f"server-{new['coordinator']} is the new coordinator (epoch {new['epoch']}), "
            f"{time.monotonic() - killed_at:.1f} s after the kill (from status)")
        self.narrator.wait(lambda: not self.watch.rows().get(old, {}).get("alive"), 10,
                           f"the broker to drop server-{old}")
        say(f"the broker had dropped server-{old} from its pool "
            f"{time.monotonic() - killed_at:.1f} s after the kill; requests it held were "
            f"resent by the users' Lazy Pirate to others: a delay, not an error "
            f"({len(self.activity.errors)} errors so far)")

    def join_new_server(self) -> None:
        say = self.narrator.say
        self.narrator.section("4. A new server joins")
        sid = max(self.servers.offsets) + 1
        say(f"server-{sid} has an empty folder: it subscribes to the bus first, then "
            f"pulls every event from a peer (FETCH -> EVENTS, in batches), and joins "
            f"the pool only when it holds what the others held when it arrived")
        started = time.monotonic()
        self.start_server(sid, NEWCOMER_OFFSET)
        rows = self.follow_phases([sid], 30)
        self.servers.fate[sid] = "joined"
        say(f"server-{sid} serving {time.monotonic() - started:.1f} s after its start, "
            f"holding {rows[sid].get('events')} events")
        say(f"server-{sid} has the highest id: it calls an election at start and, "
            f"by the bully rule, takes over")
        def coordinated_by_newcomer():
            status = self.watch.status() or {}
            return status if status.get("coordinator") == sid else None
        status = self.narrator.wait(coordinated_by_newcomer, 10, f"server-{sid} coordinator")
        say(f"server-{sid} is coordinator (epoch {status['epoch']})")

    def bring_back(self) -> None:
        sid = self.killed
        if sid is None:
            raise TimeoutError("no killed server to bring back")
        self.narrator.section(f"5. server-{sid} comes back on its old data")
        log = self.config.log_path(f"server-{sid}")
        tail = FileTail(log, log.stat().st_size if log.exists() else 0)
        started = time.monotonic()
        self.start_server(sid, self.servers.offsets[sid])
        rows = self.follow_phases([sid], 30)
        self.servers.fate[sid] = "killed, back"
        reloaded, fetched = _catch_up(tail.read_lines())
        self.narrator.say(f"server-{sid} serving {time.monotonic() - started:.1f} s after its "
                          f"restart: it reloaded {reloaded} events from its disk, fetched from a "
                          f"peer only the {fetched} it had missed, and takes new ones from the "
                          f"bus ({rows[sid].get('events')} now)")

    def remove_server(self) -> None:
        say = self.narrator.say
        self.narrator.section("6. A server is removed while users keep writing")
        status = self.watch.status() or {}
        rows = serving(rows_by_id(status))
        candidates = [s for s in sorted(rows) if s != status.get("coordinator")]
        if not candidates:
            raise TimeoutError("no server to remove but the coordinator")
        sid = candidates[0]
        acked, errors = self.activity.acked(), len(self.activity.errors)
        say(f"SIGTERM to server-{sid}: it tells the broker LEAVE (out of the pool at "
            f"once) and the bus BYE, answers what it holds, and exits")
        started = time.monotonic()
        code = self.group.terminate(f"server-{sid}", timeout=3.0)
        self.servers.fate[sid] = "removed (SIGTERM)"
        say(f"server-{sid} exited with code {code} after {time.monotonic() - started:.2f} s")
        self.narrator.idle(time.monotonic() + 1.5)
        say(f"meanwhile the users went on: +{self.activity.acked() - acked} writes "
            f"acknowledged, +{len(self.activity.errors) - errors} errors")

    # --- the whole demo ----------------------------------------------------------------------
    def run(self) -> int:
        self.narrator.say(f"demo: a broker, {self.server_count} servers and {len(self.users)} "
                          f"users, clock chaos on, about {self.seconds:g} s; logs in "
                          f"{shown(self.log_dir)}/, data in {shown(self.config.data_dir)}/")
        try:
            self.start_cluster()
            self.start_bots()
            self.scenario()
            self.stop_bots()
            nothing_lost = self.verification.run(self.servers.fate)
            return 0 if nothing_lost and not self.narrator.problems else 1
        except DemoError as exc:
            self.narrator.problem(f"demo stopped: {exc}")
            return 1
        except ClientError as exc:
            self.narrator.problem(f"a check read failed: {exc}")
            return 1
        finally:
            self.clean_up()

    def clean_up(self) -> None:
        self.verification.close()
        self.narrator.close()
        self.group.stop_all(timeout=2.0)
        left = [name for name in self.group.procs if self.group.alive(name)]
        self.narrator.write(f"\nstopped every process the demo started ({len(self.group.procs)} "
                            f"names; pids in {shown(self.pid_file)}); still running: "
                            f"{', '.join(left) if left else 'none'}\n")


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
    """Fresh folders for this run unless given: logs/demo-<time> (``logs/latest`` then
    points to it, as for each ``up``: ``common.processes.new_run_folder``) and
    data/demo-<time>.

    Absolute, because the processes run in the project folder, not necessarily here."""
    logs = Path(log_dir).resolve() if log_dir else new_run_folder(DEFAULT_LOG_DIR, "demo")
    data = Path(data_dir or Path("data") / logs.name).resolve()
    return str(data), str(logs)


def run_demo(seconds: float, servers: int, users: int, port_base: int | None = None,
             host: str | None = None, data_dir: str | None = None,
             log_dir: str | None = None) -> int:
    """Run the demo; its exit code. Without ``port_base``, the configured base (5555
    by default) if its ports are free, else a free one, so a demo starts even beside
    a running cluster."""
    data_dir, log_dir = demo_folders(data_dir, log_dir)
    if port_base is None:
        port_base = usable_port_base(load_config().port_base)
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
