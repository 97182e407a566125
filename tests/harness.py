"""A real cluster for tests: broker and servers as processes on free ports.

Each ``Cluster`` lives in a tmp folder of its own (data and logs inside it) on
a port base nobody else is using, so tests, and two clusters in one test, run
side by side. Tests wait for *conditions* with deadlines, never a bare sleep.
"""
from __future__ import annotations

import dataclasses
import json as jsonlib
import secrets
import subprocess
import sys
from pathlib import Path

import zmq

from common import log_lines as LL
from clients.connection import ClientError, Connection
from common import cluster_status, keys
from common import protocol as P
from common.clock import LamportClock, PhysicalClock
from common.config import Config, load_config
from common.processes import ROOT, ProcessGroup, cluster_env, free_port_base, wait_until
from tests import wire

FAST_TIMING = {
    # faster heartbeats so joins, deaths and catch-up happen quickly; every
    # timeout stays at least three intervals, as Config.validate() asks
    "SOCIAL_HEARTBEAT_INTERVAL": "0.1",
    "SOCIAL_SERVER_TIMEOUT": "1.0",
    "SOCIAL_PEER_TIMEOUT": "0.8",
    "SOCIAL_ELECTION_TIMEOUT": "0.6",
    "SOCIAL_ANSWER_TIMEOUT": "0.2",
    "SOCIAL_COORDINATOR_WAIT": "0.4",
    "SOCIAL_JOIN_CLOCK_WAIT": "1.0",
}
"""Environment overrides every process of a test cluster gets."""

CHEAP_ACCOUNTS = {
    # a password hash of ~0.1 ms instead of ~20 ms, and no budget that refuses a burst
    # of them: tests register hundreds of users at once (tests/test_accounts.py keeps
    # the real parameters)
    "SOCIAL_ARGON2_TIME_COST": "1",
    "SOCIAL_ARGON2_MEMORY_KIB": "64",
    "SOCIAL_AUTH_HASHES_PER_S": "100000",
}
SIGN_UP_EVENTS = 2
"""Events a user's registration through the harness makes: their account (register)
and their session (login)."""
PASSWORD = "harness-pass-7Qx2"
"""Every test user's password: in the CLI's environment (``SOCIAL_PASSWORD``), so
each ``python -m clients`` logs in (registering first) by itself, and used by
``Cluster.login`` for the in-process connections."""

LOG_TAIL_LINES = 40

TRUSTED = "server-99"
"""The key of the tests' own trusted sockets (a forger on the bus, raw DEALERs on the
backend and peer ports): admitted as server 99, an id no test cluster runs, so the
hostile tests still test a buggy *trusted* sender (malformed frames, huge stamps)."""

SERVING_LINE = "| " + LL.SERVING.split(": ")[0].format(old="syncing")
"""A server's own log line when it enters the pool (not a peer's phase it heard of)."""


class Cluster:
    """Broker + servers of one test, in ``folder``; always call ``stop()``."""

    def __init__(self, folder: Path, env: dict | None = None,
                 server_args: dict[int, list[str]] | None = None,
                 broker_args: list[str] | None = None) -> None:
        """``server_args``: each server's own arguments (given before those of the
        ``start_server`` call), ``broker_args`` the broker's (``--bind``, say)."""
        self.folder = Path(folder)
        self.server_args = server_args or {}
        self.broker_args = broker_args or []
        self.env_extra = {**FAST_TIMING, **CHEAP_ACCOUNTS, **(env or {})}
        # the harness reads the same settings its processes do
        overrides = {k[len("SOCIAL_"):].lower(): v for k, v in self.env_extra.items()}
        self.config = load_config(port_base=free_port_base(), data_dir=str(self.folder / "data"),
                                  log_dir=str(self.folder / "logs"), **_typed(overrides))
        self.group = ProcessGroup(self.config, self.env_extra)
        self.env = {**cluster_env(self.config, self.env_extra), "SOCIAL_PASSWORD": PASSWORD}
        self.tokens: dict[str, str] = {}       # user -> session token (Cluster.login)
        self._ctx = zmq.Context()
        self._ctx.linger = 0
        self._log_marks: dict[str, int] = {}   # log size when each process last started

    # --- processes -----------------------------------------------------------------
    def start(self, servers: int = 3, *server_args: str) -> "Cluster":
        self.group.start_broker(*self.broker_args)
        for server_id in range(1, servers + 1):
            self.start_server(server_id, *server_args)
        return self

    def start_server(self, server_id: int, *args: str) -> subprocess.Popen:
        name = f"server-{server_id}"
        path = self.config.log_path(name)
        self._log_marks[name] = path.stat().st_size if path.exists() else 0
        return self.group.start_server(server_id, *self.server_args.get(server_id, ()), *args)

    def kill(self, name: str) -> None:
        self.group.kill(name)

    def terminate(self, name: str) -> int | None:
        return self.group.terminate(name)

    def alive(self, name: str) -> bool:
        return self.group.alive(name)

    def names(self) -> list[str]:
        return sorted(self.group.procs)

    def stop(self) -> None:
        self.group.stop_all()
        self._ctx.destroy(0)

    # --- talking to it ---------------------------------------------------------------
    def connection(self, user: str | None = None, deadline: float = 10.0,
                   login: bool = True, server: int | None = None) -> Connection:
        """A Lazy Pirate connection for python-level requests, logged in as ``user``
        (registered first if need be, through ``server`` if given) unless ``login``
        is False; close it after use."""
        conn = self._bare_connection(user, deadline)
        if user is not None and login:
            try:
                conn.token = self.login(user, deadline=deadline, server=server)
            except BaseException:
                conn.close()
                raise
        return conn

    def _bare_connection(self, user: str | None, deadline: float) -> Connection:
        config = dataclasses.replace(self.config, request_deadline=deadline,
                                     request_timeout=min(self.config.request_timeout, deadline))
        return Connection(config.validate(), user, LamportClock(), PhysicalClock())

    def login(self, user: str, password: str = PASSWORD, fresh: bool = False,
              deadline: float = 10.0, server: int | None = None) -> str:
        """A session token of ``user`` (kept for the next call unless ``fresh``): logs
        in, registering the name first if nobody owns it; through ``server`` if given
        (a test that must know which server originates which events)."""
        if user in self.tokens and not fresh:
            return self.tokens[user]
        conn = self._bare_connection(user, deadline)
        try:
            token = new_token()
            try:
                conn.request(P.OP_LOGIN, {"password": password}, server, token=token)
            except ClientError as exc:
                if exc.code != P.ERR_NO_ACCOUNT:
                    raise
                conn.request(P.OP_REGISTER, {"password": password}, server)
                conn.request(P.OP_LOGIN, {"password": password}, server, token=token)
        finally:
            conn.close()
        self.tokens[user] = token
        return token

    def request(self, user: str | None, op: str, args: dict, server: int | None = None,
                deadline: float = 10.0, token: str | None = None) -> dict:
        """One request as ``user``, logged in (or with ``token``, as given). A register
        without a password registers with the harness's and logs in."""
        if op == P.OP_REGISTER and "password" not in args:
            self.login(user, deadline=deadline, server=server)
            return {"user": user, "new": True}
        if token is not None or user is None or op in P.OPEN_OPS:
            conn = self._bare_connection(user, deadline)
            conn.token = token
        else:           # logged in through any server: ``server`` may be down on purpose
            conn = self.connection(user, deadline)
        try:
            try:
                return conn.request(op, args, server)
            except ClientError as exc:       # a kept token of a cluster since wiped
                if exc.code != P.ERR_UNAUTHORIZED or token is not None or \
                        user not in self.tokens or conn.token != self.tokens[user]:
                    raise
            conn.token = self.login(user, fresh=True, deadline=deadline)
            return conn.request(op, args, server)
        finally:
            conn.close()

    def status(self, deadline: float = 1.0) -> dict | None:
        """The broker's status, or None if it does not answer in time."""
        try:
            return self.request(None, P.OP_STATUS, {}, deadline=deadline)
        except ClientError:
            return None

    def servers(self) -> dict[int, dict]:
        return cluster_status.rows_by_id(self.status())

    def serving(self) -> dict[int, dict]:
        return cluster_status.serving(self.servers())

    def wait_serving(self, ids, timeout: float = 15.0) -> dict[int, dict]:
        """The servers ``ids`` serving, as the broker sees them *and* in their own log
        since they were last started (the broker may still show a killed process's row)."""
        ids = sorted(ids)

        def rows():
            logs_say = all(SERVING_LINE in self.log_since_start(f"server-{i}") for i in ids)
            return self.servers() if logs_say else {}
        return cluster_status.wait_serving(rows, ids, timeout)

    def wait_converged(self, timeout: float = 10.0) -> dict[int, dict]:
        """Every live server holds the same events (same digest and count).

        ``status`` shows each server as of its last heartbeat, so only rows sent
        after this call began count (see common/cluster_status.py)."""
        start = cluster_status.lamports(self.servers())

        def converged():
            live = {i: s for i, s in self.servers().items() if s["alive"]}
            fresh = cluster_status.all_newer(live, start)
            return live if live and fresh and cluster_status.same_events(live) else None
        return wait_until(converged, timeout, interval=0.05, what="equal digests")

    def digests(self) -> dict[int, str]:
        return {i: s["digest"] for i, s in self.servers().items() if s["alive"]}

    def cli(self, user: str | None, *args: str, check: bool = True, json: bool = True,
            timeout: float = 30.0):
        """``python -m clients [--user USER] ARGS [--json]``: the parsed JSON, or the
        CompletedProcess when ``check`` is False."""
        command = [sys.executable, "-m", "clients"]
        if user is not None:
            command += ["--user", user]
        command += list(args)
        if json:
            command.append("--json")
        done = subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if not check:
            return done
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(command[2:])} exited {done.returncode}: "
                                 f"{done.stderr.strip()}")
        return jsonlib.loads(done.stdout) if json else done.stdout

    def curve_options(self, key: str = "client", peer: int | None = None) -> dict:
        """Socket options of a test's own CURVE client: ``key`` is ``client`` (an
        ephemeral keypair, as users have), ``server-N`` (server N's own key from the
        cluster's folder, made and admitted if missing: a trusted sender) or
        ``stranger`` (a fresh key in no allowlist); it checks the broker's key, or
        server ``peer``'s on a peer port."""
        data = self.config.data_dir
        if key in ("client", "stranger"):
            public, secret = zmq.curve_keypair()
        else:
            public, secret = keys.keypair(data, key)
            keys.admit_self(data, int(key.split("-")[1]), public)
        server_key = (keys.cluster_broker_key(data) if peer is None
                      else keys.load_public(keys.allowed_dir(data) / f"server-{peer}.key"))
        return {"curve_secretkey": secret, "curve_publickey": public,
                "curve_serverkey": server_key}

    def dealer(self, port: int | None = None, key: str | None = None) -> zmq.Socket:
        """A raw DEALER connected to ``port`` (the frontend by default), a CURVE client
        with ``key`` (see ``curve_options``; by default ``client`` on the frontend, the
        tests' trusted ``server-99`` elsewhere)."""
        port = port or self.config.frontend_port
        if key is None:
            key = "client" if port in (self.config.frontend_port,
                                       self.config.fast_frontend_port) else TRUSTED
        peer = port - self.config.peer_port(0) if port > self.config.peer_port(0) else None
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        for name, value in self.curve_options(key, peer).items():
            setattr(sock, name, value)
        sock.connect(self.config.endpoint(port))
        return sock

    def raw_request(self, sock: zmq.Socket, frames: list[bytes],
                    timeout: float = 5.0) -> "wire.Raw | None":
        """Send frames on a DEALER; the decoded reply, or None if none comes in time."""
        sock.send_multipart(frames)
        if not sock.poll(int(timeout * 1000)):
            return None
        return wire.parse(sock.recv_multipart())

    # --- diagnostics -------------------------------------------------------------------
    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        out = []
        for path in sorted(Path(self.config.log_dir).glob("*")):
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            if tail:
                out.append(f"----- {path.name} (last {len(tail)} lines) -----")
                out.extend(tail)
        return "\n".join(out)

    def log_since_start(self, name: str) -> str:
        """The log of ``name`` written since this harness last started it."""
        path = self.config.log_path(name)
        if not path.exists():
            return ""
        with open(path, "rb") as f:
            f.seek(self._log_marks.get(name, 0))
            return f.read().decode(errors="replace")

    def log_text(self, name: str) -> str:
        path = self.config.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _typed(overrides: dict[str, str]) -> dict:
    """Environment strings to the types of Config's fields."""
    kinds = {name: type(value) for name, value in Config().__dict__.items()}
    return {name: (raw.lower() in ("1", "true", "yes", "on") if kinds[name] is bool
                   else kinds[name](raw)) for name, raw in overrides.items()}
