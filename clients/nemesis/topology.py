"""Network namespaces on a Linux bridge: one for the broker, one per server, one for
the users, each with an address of its own on a private /24.

Every name carries the prefix ``snm<pid>-`` of the nemesis that made it, and what a
run creates is written to a state file (``STATE_DIR/snm<pid>.json``) before it is
created, so a later run can remove the leftovers of one whose process is gone
(``remove_leftovers``) and nothing else is ever touched. iptables rules live inside
our own namespaces (chains ``NEM_IN`` and ``NEM_OUT``, jumped to from ``INPUT`` and
``OUTPUT``), so they go with them; the only rules in the host's tables are two
ACCEPTs for our bridge (the host's address on it, and bridged traffic when
``br_netfilter`` sends it through ``FORWARD``), each tagged with our prefix.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from common.ownership import pid_alive

STATE_DIR = Path("/run/social-nemesis")
PREFIX_STEM = "snm"
IN_CHAIN = "NEM_IN"
OUT_CHAIN = "NEM_OUT"
COMMAND_TIMEOUT = 10.0


class TopologyError(RuntimeError):
    """A command that builds or changes the topology failed."""


def prerequisites_missing() -> str | None:
    """Why the nemesis cannot run here (one line), or None."""
    if os.geteuid() != 0:
        return "nemesis needs root (network namespaces and iptables): run it as root"
    missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
    if missing:
        return (f"nemesis needs {' and '.join(missing)} (apt-get install -y iproute2 "
                f"iptables)")
    return None


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if check and done.returncode != 0:
        raise TopologyError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
    return done


def prefix_of(pid: int) -> str:
    return f"{PREFIX_STEM}{pid}-"


@dataclass
class Topology:
    """One run's namespaces. ``roles``: ``b`` (broker), ``u`` (users), ``s1``..``sN``."""
    servers: int
    pid: int = field(default_factory=os.getpid)
    subnet: int = 0                      # X of 10.213.X.0/24, chosen by ``create``
    created: dict = field(default_factory=lambda: {"namespaces": [], "links": [],
                                                   "host_rules": [], "pids": []})

    @property
    def prefix(self) -> str:
        return prefix_of(self.pid)

    @property
    def roles(self) -> list[str]:
        return ["b", "u", *(f"s{i}" for i in range(1, self.servers + 1))]

    def ns(self, role: str) -> str:
        return f"{self.prefix}{role}"

    def server_ns(self, server_id: int) -> str:
        return self.ns(f"s{server_id}")

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    def address(self, role: str) -> str:
        host = {"br": 1, "b": 2, "u": 3}.get(role) or 10 + int(role[1:])
        return f"10.213.{self.subnet}.{host}"

    def server_address(self, server_id: int) -> str:
        return self.address(f"s{server_id}")

    @property
    def broker_address(self) -> str:
        return self.address("b")

    @property
    def state_path(self) -> Path:
        return STATE_DIR / f"{self.prefix.rstrip('-')}.json"

    # --- building ------------------------------------------------------------------
    def create(self) -> "Topology":
        """The bridge, and each role's namespace with ``lo`` up and ``eth0`` on the
        bridge; the host gets .1 on it. Recorded in the state file as it goes."""
        self.subnet = _free_subnet(self.pid)
        self._record()
        self._add("links", self.bridge, ["ip", "link", "add", self.bridge, "type", "bridge"])
        run("ip", "addr", "add", f"{self.address('br')}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for chain, spec in (("INPUT", ["-i", self.bridge]),
                            ("FORWARD", ["-i", self.bridge, "-o", self.bridge])):
            rule = [chain, *spec, "-m", "comment", "--comment", self.prefix, "-j", "ACCEPT"]
            self._add("host_rules", rule, ["iptables", "-I", *rule])
        for role in self.roles:
            ns, veth = self.ns(role), f"{self.prefix}{role}"
            self._add("namespaces", ns, ["ip", "netns", "add", ns])
            self.exec(role, "ip", "link", "set", "lo", "up")
            self._add("links", veth, ["ip", "link", "add", veth, "type", "veth", "peer",
                                      "name", "eth0", "netns", ns])
            run("ip", "link", "set", veth, "master", self.bridge)
            run("ip", "link", "set", veth, "up")
            self.exec(role, "ip", "addr", "add", f"{self.address(role)}/24", "dev", "eth0")
            self.exec(role, "ip", "link", "set", "eth0", "up")
            for chain, hook in ((IN_CHAIN, "INPUT"), (OUT_CHAIN, "OUTPUT")):
                self.exec(role, "iptables", "-N", chain)
                self.exec(role, "iptables", "-A", hook, "-j", chain)
        return self

    def exec(self, role: str, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.ns(role), *command, check=check)

    def netns_command(self, role: str, *command: str) -> list[str]:
        """``command`` run in ``role``'s namespace (``ip netns exec`` execs it in place:
        the pid of the Popen is the command's)."""
        return ["ip", "netns", "exec", self.ns(role), *command]

    def note_pid(self, pid: int) -> None:
        """A process we started: recorded, so that leftovers can be told apart."""
        self.created["pids"].append(pid)
        self._record()

    def _add(self, kind: str, what, command: list[str]) -> None:
        self.created[kind].append(what)      # recorded first: a crash in between is cleaned
        self._record()
        run(*command)

    def _record(self) -> None:
        STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": self.pid, "prefix": self.prefix,
                                   "subnet": self.subnet, "servers": self.servers,
                                   **self.created}))
        tmp.replace(self.state_path)

    # --- faults: rules in our namespaces' own chains -------------------------------------
    def drop_in(self, role: str, *match: str) -> None:
        self.exec(role, "iptables", "-A", IN_CHAIN, *match, "-j", "DROP")

    def drop_out(self, role: str, *match: str) -> None:
        self.exec(role, "iptables", "-A", OUT_CHAIN, *match, "-j", "DROP")

    def heal(self, role: str) -> None:
        self.exec(role, "iptables", "-F", IN_CHAIN)
        self.exec(role, "iptables", "-F", OUT_CHAIN)

    def heal_all(self) -> None:
        for role in self.roles:
            self.heal(role)

    def rules(self, role: str) -> list[str]:
        """The fault rules now in ``role``'s chains."""
        out = self.exec(role, "iptables", "-S").stdout.splitlines()
        return [line for line in out if line.startswith(f"-A {IN_CHAIN} ")
                or line.startswith(f"-A {OUT_CHAIN} ")]

    # --- removing ---------------------------------------------------------------------------
    def remove(self) -> list[str]:
        """Everything this run created; returns what could not be removed."""
        return remove_recorded(self.created, self.prefix, self.state_path)


def remove_recorded(created: dict, prefix: str, state_path: Path) -> list[str]:
    """Remove what a state file records, checking each name carries ``prefix``: first
    the processes still in our namespaces, then namespaces, links and host rules."""
    problems = []
    for ns in created.get("namespaces", []):
        if not ns.startswith(prefix):
            continue
        for pid in _pids_in(ns):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    for ns in reversed(created.get("namespaces", [])):
        if ns.startswith(prefix) and ns in namespaces():
            done = run("ip", "netns", "del", ns, check=False)
            if done.returncode != 0:
                problems.append(f"namespace {ns}: {done.stderr.strip()}")
    for link in reversed(created.get("links", [])):
        if link.startswith(prefix) and link in links():
            done = run("ip", "link", "del", link, check=False)
            if done.returncode != 0 and "Cannot find device" not in done.stderr:
                problems.append(f"link {link}: {done.stderr.strip()}")
    for rule in created.get("host_rules", []):
        if prefix not in rule:
            continue
        while run("iptables", "-C", *rule, check=False).returncode == 0:
            if run("iptables", "-D", *rule, check=False).returncode != 0:
                problems.append(f"host rule {' '.join(rule)}")
                break
    if not problems:
        state_path.unlink(missing_ok=True)
    return problems


def remove_leftovers() -> list[str]:
    """Remove what earlier nemesis runs whose process is gone left behind (by their
    state files); returns one line per run cleaned."""
    cleaned = []
    if not STATE_DIR.is_dir():
        return cleaned
    for path in sorted(STATE_DIR.glob(f"{PREFIX_STEM}*.json")):
        try:
            state = json.loads(path.read_text())
            pid, prefix = int(state["pid"]), str(state["prefix"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid_alive(pid) or prefix != prefix_of(pid):
            continue
        problems = remove_recorded(state, prefix, path)
        cleaned.append(f"removed the leftovers of nemesis pid {pid} ({prefix}*)"
                       + (f"; could not remove: {'; '.join(problems)}" if problems else ""))
    return cleaned


def namespaces() -> set[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def links() -> set[str]:
    out = run("ip", "-o", "link", "show", check=False).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
            if line.count(":") >= 2}


def host_rules() -> list[str]:
    return run("iptables", "-S", check=False).stdout.splitlines()


def traces(prefix: str) -> list[str]:
    """Every namespace, link and host rule whose name carries ``prefix``."""
    return ([f"namespace {n}" for n in sorted(namespaces()) if n.startswith(prefix)]
            + [f"link {n}" for n in sorted(links()) if n.startswith(prefix)]
            + [f"rule {r}" for r in host_rules() if prefix in r])


def _pids_in(ns: str) -> list[int]:
    out = run("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _free_subnet(pid: int) -> int:
    """X of a 10.213.X.0/24 that no host address or route touches, and that no other
    nemesis state file holds."""
    taken = set()
    for path in STATE_DIR.glob(f"{PREFIX_STEM}*.json") if STATE_DIR.is_dir() else ():
        try:
            taken.add(int(json.loads(path.read_text())["subnet"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    used = run("ip", "-4", "-o", "addr", "show", check=False).stdout + \
        run("ip", "-4", "route", "show", "table", "all", check=False).stdout
    networks = []
    for word in used.split():
        try:
            networks.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue
    for k in range(250):
        x = 20 + (pid + k) % 230
        candidate = ipaddress.ip_network(f"10.213.{x}.0/24")
        if x not in taken and not any(candidate.overlaps(n) for n in networks
                                      if n.prefixlen > 0):
            return x
    raise TopologyError("no free 10.213.X.0/24 subnet")
