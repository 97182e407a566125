"""How long after a healed partition a server's traffic flows again (issue 13).

Run as root: ``python -m tests.heal_probe [--root DIR] [--cut S] [--runs N]``.

It builds network namespaces of its own (``sclk<pid>-*``): a bridge, the broker on
10.213.0.1 and servers 1-3 on 10.213.0.11-13, each started from ``--root`` (a
checkout: the code to measure; default this one) with ``--bind``/``--advertise``.
Once all three serve and each hears the other two on the bus, it cuts server 3 from
the broker with iptables DROP in server 3's namespace (both ways; its links to its
peers stay), for ``--cut`` seconds, heals it, and reads from the logs when traffic
of server 3 was seen again after the heal:

* bus: the first ``recv server-3 | peer appeared`` in server 1's or 2's log (its
  BEAT came through the broker's bus again);
* backend: the first ``recv server-3 | registered`` in the broker's log (its DEALER,
  reconnected during the cut, got through).

Times are the logs' own (each process's synchronized clock; every clock here starts
true, so they agree with the host's within milliseconds).

``--raw`` measures the link alone, the same way: a ROUTER in server 1's namespace and
a DEALER in server 3's that sends a ping every 20 ms and records each echo, once with
``common/sockets.py``'s options and once with ZeroMQ's defaults; the cut comes after
``STEADY_ECHOES`` echoes, and the figure is the first echo after the heal. (The
cluster's own figures include the server's reopening of its sockets when the broker
has been silent for ``broker_timeout``, and up to one heartbeat interval before the
next BEAT.) It prints one line per run and removes every namespace, process and rule
it made, even on error or Ctrl-C (a namespace's iptables rules and veths go with it).
A measurement, not a test: no timing is asserted anywhere; the only timed waits
(``hold``) keep a fault in place for as long as asked.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from common.processes import wait_until

HERE = Path(__file__).resolve().parent.parent
PREFIX = f"sclk{os.getpid()}"
BRIDGE_NS = f"{PREFIX}-br"
NET = "10.213.0"
BROKER_IP = f"{NET}.1"
SERVERS = {1: f"{NET}.11", 2: f"{NET}.12", 3: f"{NET}.13"}
LINE_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \|")
STEADY_ECHOES = 25
"""Echoes (one per 20 ms ping) that show the raw link steady before the fault."""
NEVER = threading.Event()
"""Never set: ``hold`` waits on it for a given time."""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def ns_name(node: str) -> str:
    return f"{PREFIX}-{node}"


class Net:
    """The namespaces: one bridge, one namespace per process, veths between."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def build(self) -> None:
        self._ns(BRIDGE_NS)
        sh("ip", "-n", BRIDGE_NS, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", BRIDGE_NS, "link", "set", "br0", "up")
        for node, ip in [("b", BROKER_IP)] + [(f"s{sid}", ip) for sid, ip in SERVERS.items()]:
            ns = self._ns(ns_name(node))
            sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name",
               f"p{node}", "netns", BRIDGE_NS)
            sh("ip", "-n", BRIDGE_NS, "link", "set", f"p{node}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def _ns(self, name: str) -> str:
        sh("ip", "netns", "add", name)
        self.made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def cut(self, node: str, peer_ip: str, on: bool) -> None:
        op = "-A" if on else "-D"
        for chain, flag in (("INPUT", "-s"), ("OUTPUT", "-d")):
            sh("ip", "netns", "exec", ns_name(node), "iptables", op, chain, flag, peer_ip,
               "-j", "DROP")

    def remove(self) -> None:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)
        self.made.clear()


class Processes:
    def __init__(self, root: Path, folder: Path) -> None:
        self.root, self.folder = root, folder
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SOCIAL_DATA_DIR": str(folder / "data"),
                    "SOCIAL_LOG_DIR": str(folder / "logs"), "PYTHONPATH": str(root)}
        for key in [k for k in self.env if k.startswith("SOCIAL_") and
                    k not in ("SOCIAL_DATA_DIR", "SOCIAL_LOG_DIR")]:
            del self.env[key]

    def start(self, node: str, args: list[str]) -> None:
        err = open(self.folder / f"{node}.stderr", "wb")
        self.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ns_name(node), sys.executable, "-m", *args],
            cwd=self.root, env=self.env, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(3)
        self.procs.clear()


def log_lines(folder: Path, process: str) -> list[tuple[float, str]]:
    path = folder / "logs" / f"{process}.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = LINE_TIME.match(line)
        if m:
            stamp = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
            out.append((stamp.timestamp(), line))
    return out


def first_after(folder: Path, processes, fragment: str, after: float) -> float | None:
    times = [t for p in processes for t, line in log_lines(folder, p)
             if t >= after and fragment in line]
    return min(times, default=None)


def hold(seconds: float) -> None:
    """Keep a fault in place for ``seconds``: the interval the probe measures across,
    not a wait for anything. SIGTERM or Ctrl-C still ends it at once (the handler
    raises in the main thread, which this wait does not block)."""
    NEVER.wait(seconds)


def peers_seen(folder: Path) -> bool:
    """Whether every server's log shows both others' bus traffic (``peer appeared``)."""
    for sid in SERVERS:
        text = "\n".join(line for _, line in log_lines(folder, f"server-{sid}"))
        if not all(f"recv server-{other} | peer appeared" in text
                   for other in SERVERS if other != sid):
            return False
    return True


def start_cluster(folder: Path, procs: Processes) -> None:
    """The broker, then servers 1-3, each in its namespace; returns once all serve."""
    procs.start("b", ["broker", "--host", BROKER_IP, "--bind", BROKER_IP])
    wait_until(lambda: (folder / "data" / "keys" / "broker.key").exists(), 10,
               what="the broker key")
    for sid, ip in SERVERS.items():
        procs.start(f"s{sid}", ["servers", "--id", str(sid), "--host", BROKER_IP,
                                "--bind", ip, "--advertise", ip])
    wait_until(lambda: sum("READY: joins the pool" in line
                           for _, line in log_lines(folder, "broker")) >= 3, 40,
               what="three servers serving")


def one_run(root: Path, cut_s: float, keep: Path | None) -> tuple[float | None, float | None]:
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    net, procs = Net(), Processes(root, folder)
    try:
        net.build()
        start_cluster(folder, procs)
        # steady before the fault: every server hears both others on the bus (so
        # servers 1 and 2 know server 3 as a peer before it vanishes and reappears)
        wait_until(lambda: peers_seen(folder), 15, what="every server hearing both others")
        net.cut("s3", BROKER_IP, True)
        hold(cut_s)
        net.cut("s3", BROKER_IP, False)
        healed = time.time()
        bus = wait_until(lambda: first_after(folder, ["server-1", "server-2"],
                                             "recv server-3 | peer appeared", healed), 15,
                         what="server-3's BEAT on the bus")
        backend = wait_until(lambda: first_after(folder, ["broker"],
                                                 "recv server-3 | registered", healed), 15,
                             what="server-3 at the broker")
        return bus - healed, backend - healed
    finally:
        procs.stop()
        net.remove()
        if keep is not None:
            shutil.copytree(folder, keep / folder.name, dirs_exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)


PINGER = """
import sys, time, zmq
from common import sockets
from common.config import Config
role, endpoint, tuned, out = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER if role == "router" else zmq.DEALER)
if tuned:
    sockets.tune(sock, Config().validate())
if role == "router":
    sock.bind(endpoint)
    while True:
        sock.send_multipart(sock.recv_multipart())
sock.connect(endpoint)
with open(out, "a") as f:
    while True:
        sock.send(b"%.6f" % time.time(), zmq.NOBLOCK) if sock.poll(0, zmq.POLLOUT) else None
        if sock.poll(20):
            while sock.poll(0):
                sock.recv()
                f.write("%.6f\\n" % time.time())
                f.flush()
"""


def raw_run(tuned: bool, cut_s: float) -> float | None:
    """The link alone: seconds from the heal to the first echo of a ping."""
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    net, procs = Net(), Processes(HERE, folder)
    echoes = folder / "echoes"
    try:
        net.build()
        endpoint = f"tcp://{SERVERS[1]}:5700"
        for node, role in (("s1", "router"), ("s3", "dealer")):
            procs.start(node, ["tests.heal_probe", "--pinger", role, endpoint,
                               "1" if tuned else "0", str(echoes)])
        wait_until(lambda: echoes.exists() and len(echoes.read_text().split()) >= STEADY_ECHOES,
                   10, what=f"{STEADY_ECHOES} echoes (the link up and steady before the fault)")
        net.cut("s3", SERVERS[1], True)
        hold(cut_s)
        net.cut("s3", SERVERS[1], False)
        healed = time.time()

        def first_echo():
            times = [float(t) for t in echoes.read_text().split()]
            return next((t for t in times if t >= healed), None)
        return wait_until(first_echo, 15, what="an echo after the heal") - healed
    finally:
        procs.stop()
        net.remove()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--pinger":     # a child, in a namespace
        sys.argv = [sys.argv[0]] + sys.argv[2:]
        exec(PINGER, {"__name__": "pinger"})
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=HERE, help="the checkout to run")
    parser.add_argument("--cut", type=float, default=5.0, help="seconds server 3 is cut off")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="copy each run's logs here")
    parser.add_argument("--raw", action="store_true", help="the link alone, tuned and not")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("heal_probe needs root (network namespaces and iptables)")
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))   # finally blocks clean up
    for run in range(1, args.runs + 1):
        if args.raw:
            for tuned in (False, True):
                try:
                    took = raw_run(tuned, args.cut)
                except TimeoutError as exc:
                    print(f"run {run}: {exc}")
                    continue
                print(f"run {run}: one DEALER -> ROUTER link, "
                      f"{'common/sockets.py options' if tuned else 'ZeroMQ defaults'}, cut "
                      f"{args.cut:.1f} s: first echo {took * 1000:.0f} ms after the heal",
                      flush=True)
            continue
        try:
            bus, backend = one_run(args.root.resolve(), args.cut, args.keep)
        except TimeoutError as exc:
            print(f"run {run}: {exc}")
            continue
        print(f"run {run}: {args.root.resolve()} cut {args.cut:.1f} s: after the heal, "
              f"server-3's BEAT on the bus in {bus * 1000:.0f} ms, at the broker in "
              f"{backend * 1000:.0f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
