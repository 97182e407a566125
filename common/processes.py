"""Start, signal and clean up the system's processes, on ports that are free
(used by run_all.py, the demo, the benchmark and the tests).

Every process is started with ``python -m broker|servers`` and an environment
that carries the cluster's port base and folders, so two clusters with
different settings run side by side. Only processes this group started are
ever signalled, by pid.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from common.config import Config

ROOT = Path(__file__).resolve().parent.parent


def cluster_env(config: Config, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update({"SOCIAL_PORT_BASE": str(config.port_base), "SOCIAL_HOST": config.host,
                "SOCIAL_DATA_DIR": str(config.data_dir), "SOCIAL_LOG_DIR": str(config.log_dir),
                "PYTHONUNBUFFERED": "1"})
    pythonpath = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{pythonpath}" if pythonpath else str(ROOT)
    env.update(extra or {})
    return env


PORT_RANGE = (20000, 32000)
"""Where free_port_base looks: below the kernel's ephemeral ports (32768-60999 by
default, /proc/sys/net/ipv4/ip_local_port_range), which outgoing connections take
at random and so could hold a port of the cluster when it binds."""


def cluster_ports(base: int, servers: int = 20) -> list[int]:
    """Every port a cluster on ``base`` binds: each ``*_port`` of ``Config`` (the
    frontend, backend, bus...) and the peer ports of servers 1..``servers``."""
    config = Config(port_base=base)
    names = sorted(n for n in dir(Config)
                   if n.endswith("_port") and isinstance(getattr(Config, n), property))
    return sorted({getattr(config, n) for n in names}
                  | {config.peer_port(i) for i in range(1, servers + 1)})


def ports_taken(ports: list[int]) -> list[int]:
    """Those of ``ports`` that cannot be bound now."""
    return [port for port in ports if not _can_bind(port)]


def ports_free(base: int, servers: int = 20) -> bool:
    """Whether every port of a cluster on ``base`` (``cluster_ports``) can be bound now."""
    return not ports_taken(cluster_ports(base, servers))


def _can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as ZeroMQ binds: a port left in TIME_WAIT by a stopped cluster is free, one a
        # process listens on is not
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_base(servers: int = 20) -> int:
    """A base whose ports (see ``ports_free``) are all free now, from PORT_RANGE."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(*PORT_RANGE)
        if ports_free(base, servers):
            return base
    raise OSError("no free port base found")


def usable_port_base(preferred: int, servers: int = 20) -> int:
    """``preferred`` if its ports are free now, else a free base (``free_port_base``)."""
    return preferred if ports_free(preferred, servers) else free_port_base(servers)


def folder_owner(folder: Path | str) -> None:
    """``ownership.InUse`` (naming the folder and the pid) if a live process holds the
    folder's lock: a server its ``LOCK``, ``run_all.py up`` the data folder's ``up.lock``.
    Nothing is created: a folder without a lock file is owned by nobody."""
    from common.ownership import LOCK_FILE, claim, release
    for name in (LOCK_FILE, "up.lock"):
        path = Path(folder) / name
        if path.is_file():
            release(claim(path, name=folder, orphan_wait=0))


LATEST = "latest"
"""The link in a log folder to its newest run (``logs/latest -> run-20261202-051500``)."""


def new_run_folder(root: Path | str, prefix: str = "run") -> Path:
    """A fresh ``root/<prefix>-<time>/`` (absolute), with ``root/latest`` pointing to it:
    each run of ``up`` or the demo logs apart, and ``tail -f logs/latest/server-1.log``,
    the timeline and the users' commands find the newest one."""
    root = Path(root).resolve()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = time.strftime(f"{prefix}-%Y%m%d-%H%M%S")
    for n in range(1, 100):                 # two runs started in one second
        folder = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir(mode=0o700)
            break
        except FileExistsError:
            continue
    else:
        raise OSError(f"no fresh run folder in {root}")
    link = root / LATEST
    tmp = root / f".{LATEST}-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(folder.name)            # relative: the folder may move as a whole
    os.replace(tmp, link)
    return folder


def wait_until(condition, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``condition`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


class ProcessGroup:
    """The processes of one cluster: broker and servers, by name."""

    def __init__(self, config: Config, env_extra: dict | None = None, quiet: bool = True) -> None:
        self.config = config
        self.env = cluster_env(config, env_extra)
        self.quiet = quiet
        self.procs: dict[str, subprocess.Popen] = {}
        self._err_marks: dict[str, int] = {}   # size of each logs/<name>.err when started

    def start(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        """Start ``python -m ARGS`` as ``name`` (refused while one by that name runs),
        with ``env`` added to the group's environment."""
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{name} is already running (pid {old.pid})")
        # stderr goes to logs/<name>.err: a crash leaves its traceback behind. Appended,
        # never truncated: a second process of that name (one refused because the
        # first owns the folder) adds its line and does not erase the first one's
        err_path = self.err_path(name)
        err_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)   # owner-only, as
        os.close(os.open(err_path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600))  # its logs
        self._err_marks[name] = err_path.stat().st_size if err_path.exists() else 0
        with open(err_path, "ab") as err:
            proc = subprocess.Popen(self.command(name, args), cwd=ROOT,
                                    env={**self.env, **env} if env else self.env,
                                    stdout=subprocess.DEVNULL if self.quiet else None,
                                    stderr=err, start_new_session=True)
        self.procs[name] = proc
        self.on_started(name, proc)
        return proc

    def command(self, name: str, args: list[str]) -> list[str]:
        """The command line that runs ``python -m ARGS`` as ``name``; a subclass may
        wrap it (the nemesis runs each process in its network namespace)."""
        return [sys.executable, "-m", *args]

    def err_path(self, name: str) -> Path:
        return Path(self.config.log_dir) / f"{name}.err"

    def stderr_since_start(self, name: str) -> str:
        """What ``name`` wrote on stderr since this group last started it."""
        try:
            with open(self.err_path(name), "rb") as f:
                f.seek(self._err_marks.get(name, 0))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def on_started(self, name: str, proc: subprocess.Popen) -> None:
        """Called by ``start`` for each process it started; a subclass may record it
        (the demo writes every pid to a file). Does nothing here."""

    def start_broker(self, *extra: str) -> subprocess.Popen:
        return self.start("broker", ["broker", *extra])

    def start_server(self, server_id: int, *extra: str) -> subprocess.Popen:
        return self.start(f"server-{server_id}", ["servers", "--id", str(server_id), *extra])

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def signal(self, name: str, sig: int) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.kill(proc.pid, sig)

    def kill(self, name: str) -> None:
        self.signal(name, signal.SIGKILL)
        self.procs[name].wait(5)

    def terminate(self, name: str, timeout: float = 3.0) -> int | None:
        """SIGTERM, wait; returns the exit code (None if it had to be killed)."""
        proc = self.procs[name]
        if proc.poll() is not None:
            return proc.returncode
        os.kill(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
            return None

    def stop_all(self, timeout: float = 2.0) -> None:
        """SIGTERM everything (servers first, so they can still say goodbye), then SIGKILL."""
        names = sorted(self.procs, key=lambda n: n == "broker")
        for name in names:
            proc = self.procs[name]
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for name in names:
            proc = self.procs[name]
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
