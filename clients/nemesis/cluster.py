"""The broker, the servers and the users' workload, each started in its namespace with
``ip netns exec NS python -m ...`` (which execs in place: the pid we hold is the
process's own), on the addresses of the topology.

All processes share one data folder, as ``run_all.py up`` and the tests' harness do:
each makes its keys there at start and a server admits itself into the allowlist
(``data/keys/``); each server keeps its own ``data/server-N``. Every process logs
into the run folder. Signals go only to the pids started here (``ProcessGroup``).
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

from clients.nemesis.topology import Topology
from common.config import load_config
from common.processes import ProcessGroup

PORT_BASE = 5555
"""Each namespace has its own ports: every run can take the default base."""
ROLE_OF = {"broker": "b", "workload": "u"}
"""The namespace of each process by name; ``server-N`` runs in ``sN``."""


class NemesisCluster(ProcessGroup):
    """Processes by name (``broker``, ``server-N``, ``workload``), each in its namespace."""

    def __init__(self, topology: Topology, data_dir: Path, log_dir: Path,
                 env_extra: dict | None = None) -> None:
        super().__init__(load_config(host=topology.broker_address, port_base=PORT_BASE,
                                     data_dir=str(data_dir), log_dir=str(log_dir)), env_extra)
        self.topology = topology
        self.log_dir = Path(log_dir)
        self.paused: set[str] = set()

    def command(self, name: str, args: list[str]) -> list[str]:
        role = ROLE_OF.get(name) or "s" + name.split("-")[1]
        return self.topology.netns_command(role, sys.executable, "-m", *args)

    def on_started(self, name: str, proc: subprocess.Popen) -> None:
        self.paused.discard(name)
        self.topology.note_pid(proc.pid)

    # --- starting -----------------------------------------------------------------------
    def start_broker(self, *extra: str) -> subprocess.Popen:
        address = self.topology.broker_address
        return super().start_broker("--host", address, "--bind", address, *extra)

    def start_server(self, server_id: int, *extra: str) -> subprocess.Popen:
        address = self.topology.server_address(server_id)
        return super().start_server(server_id, "--host", self.topology.broker_address,
                                    "--bind", address, "--advertise", address, *extra)

    def start_workload(self, history: Path, users: list[str], seconds: float,
                       max_writes: int, seed: int) -> None:
        self.start("workload", ["clients.nemesis.workload", "--history", str(history),
                                "--users", ",".join(users), "--seconds", str(seconds),
                                "--max-writes", str(max_writes), "--seed", str(seed),
                                "--servers", str(self.topology.servers)])

    # --- faults -------------------------------------------------------------------------
    def kill(self, name: str) -> None:
        """SIGKILL, and wait for the process to be gone."""
        super().kill(name)
        self.paused.discard(name)

    def pause(self, name: str) -> None:
        self.signal(name, signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        self.signal(name, signal.SIGCONT)
        self.paused.discard(name)

    def wipe_server_folder(self, server_id: int) -> None:
        """A killed server's data folder deleted (its ``.issued`` file, kept beside the
        folder, stays), as a lost disk would leave it."""
        assert not self.alive(f"server-{server_id}")
        shutil.rmtree(self.config.server_data_dir(server_id), ignore_errors=True)

    def log_text(self, name: str) -> str:
        path = self.config.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""
