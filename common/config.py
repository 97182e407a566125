"""Every address, folder and timing constant of the system, in one place.

Each field can be set from the environment as ``SOCIAL_<FIELD>`` (for example
``SOCIAL_PORT_BASE=6000``); command-line options override the environment.
``validate()`` refuses combinations that cannot work, in the spirit of
PySyncObj's ``SyncObjConf``.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass

from common.paths import joined
from common.protocol import HOST_PATTERN


DEFAULT_LOG_DIR = "logs"
LATEST_LOG_DIR = "logs/latest"
"""The newest run of ``run_all.py up`` or the demo (a link to ``logs/run-<time>/``):
the log folder of a process given none (``load_config``)."""


class ConfigError(ValueError):
    """A configuration that cannot work."""


WILDCARDS = frozenset({"*", "0.0.0.0", "::", "[::]"})
"""Bind addresses that mean every interface."""
HOST_RE = re.compile(rf"^(?=.{{1,253}}$){HOST_PATTERN}$")


def _path(*parts: str) -> Path:
    from pathlib import Path     # here: a user's command takes its paths as strings (``*_file``)
    return Path(*parts)


def _bracketed(host: str) -> str:
    """An IPv6 address given bare (``::1``) in brackets, as an endpoint needs it."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass
class Config:
    """Every setting of every process; ``load_config`` reads them (the module's docstring)."""

    # --- addresses and folders -------------------------------------------
    host: str = "127.0.0.1"
    """The broker's address: users and servers connect to it."""
    bind: str = ""
    """The address this process binds (the broker: its frontend, backend and bus; a
    server: its peer ROUTER); empty: ``host``. A wildcard (``0.0.0.0``, ``*``, ``::``)
    binds every interface."""
    advertise: str = ""
    """A server's address its peers dial (announced in READY and BEAT); empty: the
    bind address, which a wildcard bind cannot be (``advertised_host`` refuses it)."""
    port_base: int = 5555
    """Every port derives from this: see the ``*_port`` properties."""
    data_dir: str = "data"
    log_dir: str = DEFAULT_LOG_DIR

    # --- liveness (seconds, monotonic clock) -----------------------------
    heartbeat_interval: float = 0.25
    """How often every process tells its peers it is alive."""
    server_timeout: float = 2.0
    """Silence after which the broker drops a server from its pool."""
    peer_timeout: float = 1.5
    """Silence after which a server counts a peer as gone."""
    broker_timeout: float = 2.0
    """Silence after which a server reconnects to the broker."""
    write_wait: float = 1.2
    """Seconds a write waits for its copies before its user is told so (``unavailable``,
    retried under the same request id): below ``request_timeout``, so the user hears
    why before the client gives up on the try."""

    # --- election and clock synchronization -------------------------------
    election_timeout: float = 1.2
    """Silence from the coordinator after which a server calls an election."""
    answer_timeout: float = 0.4
    """How long a candidate waits for an ANSWER from a higher id."""
    coordinator_wait: float = 0.8
    """How long a candidate that got an ANSWER waits for COORDINATOR."""
    stepdown_after: float = 1.5
    """A coordinator that has not heard a majority of the members for this long steps
    down (longer than a TCP stall under heavy loss, shorter than ``claim_wait``)."""
    claim_wait: float = 2.2
    """A candidate does not claim while a member above it was heard within this long:
    a coordinator silent for a moment on a lossy link is not replaced, and one cut off
    has stepped down (``stepdown_after``) before anyone claims in its place."""
    berkeley_interval: float = 3.0
    """Seconds between two Berkeley rounds."""
    berkeley_reply_window: float = 0.3
    """How long the coordinator collects TIME_REPLY messages in a round."""
    berkeley_probes: int = 4
    """TIME_QUERY messages per round, berkeley_probe_gap apart; each server's reading
    with the shortest round trip is kept (its error is at most half that round trip)."""
    berkeley_probe_gap: float = 0.02
    berkeley_outlier_s: float = 0.02
    """Readings further than this from the median are left out of the average (and are
    still corrected to it): a clock far off -- a server started or restarted with a
    wrong clock -- never drags the others, and one whose reading was discarded for its
    round trip (so gets no correction that round) is not left behind by the average
    moving far."""
    berkeley_rtt_factor: float = 4.0
    """A reading whose round trip is above this many times the round's shortest (but
    never below ``berkeley_rtt_floor``) is discarded: it waited in a queue or for a
    retransmission, and its error is up to half its round trip."""
    berkeley_rtt_floor: float = 0.002
    """The RTT limit of a round is never below this (sub-millisecond loopback jitter
    keeps its readings)."""
    berkeley_max_rtt: float = 0.02
    """A reading whose round trip is above this is discarded whatever the round's best
    (its error could be 10 ms); so is the broker's reading of the coordinator's clock."""
    join_clock_wait: float = 2.0
    """How long a joining server waits for its first clock correction."""

    # --- client -----------------------------------------------------------
    request_timeout: float = 1.5
    """Lazy Pirate: seconds before a client resends a request."""
    request_deadline: float = 20.0
    """Total seconds a client keeps retrying before it reports an error."""
    retry_first_delay: float = 0.1
    """Seconds a client waits before resending after a retryable error reply..."""
    retry_max_delay: float = 0.5
    """...doubling each time up to this."""

    # --- replication and storage ------------------------------------------
    replicas: int = 3
    """Copies a write must have before it is acknowledged."""
    fsync: bool = False
    """fsync the write-ahead log before a write counts as held here, one fsync per loop
    turn (group commit): acks survive a power loss of the host, at a cost the benchmark
    measures. Without it an ack survives the kill of any process, not a power loss."""
    checkpoint_min: int = 5000
    """Fold the write-ahead log into TinyDB after at least this many events..."""
    checkpoint_ratio: float = 0.5
    """...or this fraction of the stored events, whichever is larger."""
    checkpoint_idle_s: float = 5.0
    """Fold a non-empty log after this long without writes."""
    checkpoint_close_wait: float = 2.0
    """Seconds a stopping server waits for a running checkpoint before killing it
    (safe at any moment: see servers/checkpointer.py)."""
    checkpoint_retry_s: float = 60.0
    """Seconds after a fold that could not write (a full disk) before it is tried again."""
    disk_probe_every: float = 1.0
    """Seconds between two probes of a folder a halted server cannot write
    (servers/disk_watch.py); the first that goes through restarts it."""
    fetch_batch: int = 5000
    """Events per catch-up reply."""

    gap_grace: float = 0.3
    """Seconds a peer may be ahead of us before we pull (its EVENT may be in flight)."""
    fetch_timeout: float = 2.0
    """Seconds a pull may go unanswered before it is sent again."""
    checkpoint_quiet_s: float = 0.25
    """A due checkpoint waits for this long without writes: a fold under load stalls
    the machine for 30-80 ms (see servers/checkpointer.py), which users would see."""
    leave_deadline: float = 1.0
    """Seconds a leaving server (SIGTERM) waits for its writes' copies before exiting."""

    # --- event loops ----------------------------------------------------------
    tick_every: float = 0.01
    """Seconds between runs of a server's periodic jobs under load (an idle loop wakes
    at their deadlines): no job needs a finer clock (the finest, a Berkeley probe
    gap, is 20 ms), and each run costs the writes of that moment a little."""
    drain: int = 1000
    """Messages a server reads from one socket per loop turn: batches its log flushes,
    EVENTs and ACKs under load, and keeps one socket from starving the others."""
    log_flush_every: float = 0.05
    """Seconds a log line may wait before it reaches the file (tail -f sees it that late)."""
    hwm: int = 200_000
    """High-water mark of the sockets between the broker and the servers (messages):
    deep enough that a burst never drops replication or requests silently."""
    client_hwm: int = 1000
    """High-water mark of the broker's frontend, per user connection: a user that
    stops reading its replies costs at most this many queued replies."""
    clock_tolerance: float = 0.005
    """Seconds the broker's clock may differ from the coordinator's before it is corrected."""
    clock_step: float = 0.05
    """The broker corrects its clock by at most this many seconds per heartbeat of the
    coordinator, once it has been set (broker/clock_follow.py)."""

    # --- ZeroMQ transport (common/sockets.py): milliseconds, as ZeroMQ takes them ---
    zmq_heartbeat_ivl: int = 200
    """ZMTP PING every this many ms on every connection (ZMQ_HEARTBEAT_IVL)."""
    zmq_heartbeat_timeout: int = 900
    """A connection that has received nothing for this long after a PING is closed
    and redialled (ZMQ_HEARTBEAT_TIMEOUT). Without it a link cut by a partition stays
    open and TCP's retransmissions back off (0.2, 0.4, ... 3.2 s): after the heal
    traffic waited up to 3.6 s for the next one. Any traffic counts, so under loss
    only a stall of several retransmissions in a row closes a connection."""
    zmq_heartbeat_ttl: int = 1000
    """The peer may close our connection after this long without traffic from us
    (ZMQ_HEARTBEAT_TTL, sent in each PING; ZeroMQ keeps a multiple of 100 ms)."""
    zmq_reconnect_ivl: int = 100
    """First redial of a lost connection after this many ms (ZMQ_RECONNECT_IVL)..."""
    zmq_reconnect_ivl_max: int = 250
    """...backing off up to this (ZMQ_RECONNECT_IVL_MAX)."""
    zmq_connect_timeout: int = 400
    """A dial not answered within this many ms is given up and tried again after the
    reconnect interval (ZMQ_CONNECT_TIMEOUT): a SYN lost in a partition is otherwise
    retried by the kernel only after 1, 3, 7 s. So a healed link is dialled again
    within about 650 ms. Must exceed the round trip to the farthest peer."""

    # --- accounts ------------------------------------------------------------
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 12288
    """argon2id parameters of a new password hash: OWASP's m=12 MiB, t=3, p=1, about
    20 ms here. A hash runs on a server's loop thread, so it must stay tens of ms."""
    auth_hashes_per_s: float = 20.0
    """Password hashes (register, login) a server runs per second at most; beyond,
    ``unavailable`` (clients retry). 20 x 20 ms keeps the loop at least half free."""
    session_ttl: float = 30 * 86400.0
    """Seconds a session token stays valid after login."""
    login_free_failures: int = 5
    """Failed logins of one user the broker lets through before throttling them..."""
    login_delay: float = 1.0
    """...then it refuses their logins for this many seconds, doubling per failure..."""
    login_max_delay: float = 900.0
    """...up to this."""

    # --- test-only fault switches ------------------------------------------
    drop_rate: float = 0.0
    """Fraction of incoming replication bus messages a server drops (tests only)."""

    # ---------------------------------------------------------------------
    @property
    def frontend_port(self) -> int:
        return self.port_base

    @property
    def backend_port(self) -> int:
        return self.port_base + 1

    @property
    def bus_in_port(self) -> int:
        """XSUB side of the bus: servers' PUB sockets connect here."""
        return self.port_base + 2

    @property
    def bus_out_port(self) -> int:
        """XPUB side of the bus: servers' SUB sockets connect here."""
        return self.port_base + 3

    @property
    def fast_frontend_port(self) -> int:
        """The fast path's ROUTER (``broker/fast_path.py``): users send ``FAST_OPS`` here."""
        return self.port_base + 4

    @property
    def fast_backend_port(self) -> int:
        """The fast path's DEALER: a serving server connects its fast socket here."""
        return self.port_base + 5

    def peer_port(self, server_id: int) -> int:
        """Each server binds a ROUTER here for catch-up requests from peers."""
        return self.port_base + 100 + server_id

    def endpoint(self, port: int) -> str:
        """The broker's ``port``, as users and servers dial it."""
        return f"tcp://{_bracketed(self.host)}:{port}"

    @property
    def bind_host(self) -> str:
        return self.bind or self.host

    def bind_endpoint(self, port: int) -> str:
        """What this process binds ``port`` on (``*`` for any wildcard)."""
        host = "*" if self.bind_host in WILDCARDS else _bracketed(self.bind_host)
        return f"tcp://{host}:{port}"

    def advertised_host(self) -> str:
        """The address a server's peers dial: ``advertise``, else the bind address;
        ConfigError when that is a wildcard (no peer can dial "every interface")."""
        if self.advertise:
            if self.advertise in WILDCARDS:
                raise ConfigError(f"--advertise {self.advertise} is a wildcard: give the "
                                  f"address the other servers reach this one at")
            return self.advertise
        if self.bind_host in WILDCARDS:
            raise ConfigError(f"--bind {self.bind_host} binds every interface: give "
                              f"--advertise ADDR (SOCIAL_ADVERTISE), the address the other "
                              f"servers reach this one at")
        return self.bind_host

    def peer_endpoint(self, server_id: int) -> str:
        """The peer endpoint a server announces: its advertised address, its peer port."""
        return f"tcp://{_bracketed(self.advertised_host())}:{self.peer_port(server_id)}"

    def fallback_peer_endpoint(self, server_id: int) -> str:
        """Where a peer that has announced no endpoint yet is dialled: the broker's host."""
        return self.endpoint(self.peer_port(server_id))

    def server_data_dir(self, server_id: int) -> Path:
        return _path(self.data_dir, f"server-{server_id}")

    def issued_path(self, server_id: int) -> Path:
        """The highest seq server ``server_id`` ever issued: beside its folder, not in it."""
        return _path(self.data_dir, f"server-{server_id}.issued")

    def members_path(self, server_id: int) -> Path:
        """The members server ``server_id`` last knew (``servers/quorum.py``): beside its
        folder, so a server whose folder was lost still knows it is one of several."""
        return _path(self.data_dir, f"server-{server_id}.members")

    def lamport_path(self, server_id: int) -> Path:
        """The Lamport ceiling of server ``server_id`` (``servers/lamport_file.py``):
        beside its folder, so a restart never reuses a stamp."""
        return _path(self.data_dir, f"server-{server_id}.lamport")

    def client_state_path(self, user: str) -> Path:
        return _path(self.client_state_file(user))

    def client_state_file(self, user: str) -> str:
        """``client_state_path`` as a string, without importing pathlib."""
        return joined(self.data_dir, "clients", f"{user}.json")

    def log_path(self, process: str) -> Path:
        return _path(self.log_file(process))

    def log_file(self, process: str) -> str:
        """``log_path`` as a string, without importing pathlib."""
        return joined(self.log_dir, f"{process}.log")

    # ---------------------------------------------------------------------
    def validate(self) -> "Config":
        for name in ("host", "bind", "advertise"):
            value = getattr(self, name)
            if value and not HOST_RE.match(_bracketed(value)) and value not in WILDCARDS:
                raise ConfigError(f"{name} {value[:80]!r} is not a host name or an IP address")
        if self.host in WILDCARDS:
            raise ConfigError(f"host {self.host} is a wildcard: give the broker's address "
                              f"(--bind binds every interface)")
        if not 1 <= self.port_base <= 65535 - 200:
            raise ConfigError(f"port_base {self.port_base} leaves no room for 200 ports")
        if self.server_timeout < 3 * self.heartbeat_interval:
            raise ConfigError("server_timeout must be at least 3 heartbeat intervals")
        if self.peer_timeout < 3 * self.heartbeat_interval:
            raise ConfigError("peer_timeout must be at least 3 heartbeat intervals")
        if self.election_timeout < 3 * self.heartbeat_interval:
            raise ConfigError("election_timeout must be at least 3 heartbeat intervals")
        if self.berkeley_reply_window >= self.berkeley_interval:
            raise ConfigError("berkeley_reply_window must be shorter than berkeley_interval")
        if self.berkeley_probes < 1 or \
                (self.berkeley_probes - 1) * self.berkeley_probe_gap >= self.berkeley_reply_window:
            raise ConfigError("every Berkeley probe must be sent within the reply window")
        if self.replicas < 1:
            raise ConfigError("replicas must be at least 1")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ConfigError("drop_rate must lie in [0, 1)")
        if self.request_timeout <= 0 or self.request_deadline < self.request_timeout:
            raise ConfigError("request_deadline must be at least one request_timeout")
        if not 0 < self.retry_first_delay <= self.retry_max_delay:
            raise ConfigError("retry delays must be positive, the first no longer than the most")
        if self.fetch_timeout <= self.gap_grace:
            raise ConfigError("fetch_timeout must be longer than gap_grace")
        if not 0 < self.tick_every <= self.heartbeat_interval / 10:
            raise ConfigError("tick_every must be positive and at most a tenth of a heartbeat")
        if self.drain < 1 or self.hwm < self.drain or self.client_hwm < 1:
            raise ConfigError("drain, hwm and client_hwm must be positive, hwm at least drain")
        if not 0 < self.log_flush_every <= 1.0:
            raise ConfigError("log_flush_every must lie in (0, 1] seconds")
        if self.leave_deadline + self.heartbeat_interval > 2.0:
            raise ConfigError("a leaving server must be gone within 2 s: leave_deadline too long")
        if self.stepdown_after <= 0 or \
                self.claim_wait < self.stepdown_after + 2 * self.heartbeat_interval:
            raise ConfigError("need 0 < stepdown_after, and stepdown_after + 2 heartbeats "
                              "<= claim_wait")
        if self.write_wait <= 0:
            raise ConfigError("write_wait must be positive")
        if self.clock_tolerance <= 0:
            raise ConfigError("clock_tolerance must be positive")
        if self.clock_step <= self.clock_tolerance:
            raise ConfigError("clock_step must be larger than clock_tolerance")
        if self.berkeley_rtt_factor < 1:
            raise ConfigError("berkeley_rtt_factor must be at least 1")
        if not 0 < self.berkeley_rtt_floor <= self.berkeley_max_rtt < self.berkeley_reply_window:
            raise ConfigError("need 0 < berkeley_rtt_floor <= berkeley_max_rtt "
                              "< berkeley_reply_window")
        if not 0 < self.zmq_heartbeat_ivl < self.zmq_heartbeat_timeout <= self.zmq_heartbeat_ttl:
            raise ConfigError("need 0 < zmq_heartbeat_ivl < zmq_heartbeat_timeout "
                              "<= zmq_heartbeat_ttl (ms)")
        if self.zmq_heartbeat_ttl > 6_553_500 or self.zmq_heartbeat_ttl < 100:
            raise ConfigError("zmq_heartbeat_ttl must lie in 100..6553500 ms (ZeroMQ's range)")
        if not 0 < self.zmq_reconnect_ivl <= self.zmq_reconnect_ivl_max:
            raise ConfigError("need 0 < zmq_reconnect_ivl <= zmq_reconnect_ivl_max (ms)")
        if self.zmq_connect_timeout < 1:
            raise ConfigError("zmq_connect_timeout must be at least 1 ms")
        if self.checkpoint_retry_s <= 0 or self.disk_probe_every <= 0:
            raise ConfigError("checkpoint_retry_s and disk_probe_every must be positive")
        if self.argon2_time_cost < 1 or self.argon2_memory_kib < 8:
            raise ConfigError("argon2 needs time_cost >= 1 and memory_kib >= 8")
        if self.auth_hashes_per_s < 1 or self.session_ttl <= 0:
            raise ConfigError("auth_hashes_per_s must be at least 1, session_ttl positive")
        if self.login_free_failures < 1 or not 0 < self.login_delay <= self.login_max_delay:
            raise ConfigError("login throttling needs free failures >= 1 and "
                              "0 < login_delay <= login_max_delay")
        return self


def _coerce(kind: type, raw: str):
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return kind(raw)


_FIELD_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def load_config(**overrides) -> Config:
    """Defaults, then ``SOCIAL_*`` environment variables, then ``overrides``
    (``None`` values in overrides are ignored, so CLI options can pass through)."""
    values = {}
    for f in dataclasses.fields(Config):
        raw = os.environ.get(f"SOCIAL_{f.name.upper()}")
        if raw is not None:
            try:
                values[f.name] = _coerce(_FIELD_TYPES[str(f.type)], raw)
            except (KeyError, ValueError) as exc:
                raise ConfigError(f"SOCIAL_{f.name.upper()}={raw!r}: {exc}") from exc
    for name, value in overrides.items():
        if value is not None:
            values[name] = value
    if "log_dir" not in values and os.path.isdir(LATEST_LOG_DIR):
        values["log_dir"] = LATEST_LOG_DIR     # a user's command logs beside the cluster's
    return Config(**values).validate()
