"""The faults: each one injected into our namespaces or processes, then healed.

Partitions and loss are iptables rules in the namespaces' own chains (healed by
flushing them: ``Topology.heal``); kills, pauses and clock offsets are signals to
server processes this run started, by pid. Which server a fault hits is decided
when it is injected, from the coordinator the status rows agree on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from clients.nemesis.cluster import NemesisCluster
from clients.nemesis.topology import Topology

LOSS = 0.2
"""Share of packets dropped on entering each namespace of the cluster."""
CLOCK_OFFSET_S = 0.5
"""Seconds off a server's clock starts in the clock fault."""
KINDS = ("partition", "loss", "kill", "pause", "clock")


@dataclass
class Target:
    """What a fault acts on: the topology, the processes, and the servers' roles now."""
    topology: Topology
    cluster: NemesisCluster
    coordinator: int
    ids: list[int]
    victim: int | None = None                           # whom a pause stopped
    healer: Callable[["Target"], str] | None = None     # how a kill is undone

    @property
    def follower(self) -> int:
        """The lowest id that is not the coordinator."""
        return min(i for i in self.ids if i != self.coordinator)


@dataclass(frozen=True)
class Fault:
    kind: str
    label: str
    inject: Callable[[Target], str]        # returns what it did, for the log line
    heal: Callable[[Target], str]


# --- partitions ----------------------------------------------------------------------------
def _isolate(t: Target) -> str:
    sid = t.follower
    t.victim = sid
    t.topology.drop_in(f"s{sid}", "-i", "eth0")
    t.topology.drop_out(f"s{sid}", "-o", "eth0")
    return f"server {sid} cut off from everyone"


def _bus_cut(t: Target) -> str:
    sid, broker = t.coordinator, t.topology.broker_address
    ports = f"{t.cluster.config.bus_in_port},{t.cluster.config.bus_out_port}"
    t.topology.drop_out(f"s{sid}", "-d", broker, "-p", "tcp", "-m", "multiport", "--dports", ports)
    t.topology.drop_in(f"s{sid}", "-s", broker, "-p", "tcp", "-m", "multiport", "--sports", ports)
    return f"coordinator {sid} cut from the bus (ports {ports}); its request link stays"


def _broker_cut(t: Target) -> str:
    kept = t.follower
    cut = [i for i in t.ids if i != kept]
    for sid in cut:
        address = t.topology.server_address(sid)
        t.topology.drop_in("b", "-s", address)
        t.topology.drop_out("b", "-d", address)
    return f"broker cut from servers {', '.join(map(str, cut))} (server {kept} still reaches it)"


def _heal_rules(t: Target) -> str:
    t.topology.heal_all()
    return "every rule removed"


# --- loss -----------------------------------------------------------------------------------
def _loss(t: Target) -> str:
    for role in ["b", *(f"s{i}" for i in t.ids)]:
        t.topology.drop_in(role, "-m", "statistic", "--mode", "random",
                           "--probability", str(LOSS))
    return f"{LOSS:.0%} of packets dropped entering the broker and every server"


# --- processes ----------------------------------------------------------------------------
def _kill(t: Target, sid: int, wipe: bool) -> str:
    t.cluster.kill(f"server-{sid}")
    if wipe:
        t.cluster.wipe_server_folder(sid)
    return f"server {sid} killed (SIGKILL)" + (", its data folder deleted" if wipe else "")


def _restart(sid: int) -> Callable[[Target], str]:
    def heal(t: Target) -> str:
        t.cluster.start_server(sid)
        return f"server {sid} started again"
    return heal


def _kill_coordinator(t: Target) -> str:
    t.healer = _restart(t.coordinator)
    return _kill(t, t.coordinator, wipe=False)


def _kill_wipe(t: Target) -> str:
    t.healer = _restart(t.follower)
    return _kill(t, t.follower, wipe=True)


def _pause(t: Target) -> str:
    t.victim = t.coordinator
    t.cluster.pause(f"server-{t.coordinator}")
    return f"coordinator {t.coordinator} paused (SIGSTOP)"


def _resume(t: Target) -> str:
    t.cluster.resume(f"server-{t.victim}")
    return f"server {t.victim} resumed (SIGCONT)"


def _clock(t: Target) -> str:
    sid = t.follower
    t.cluster.kill(f"server-{sid}")
    t.cluster.start_server(sid, "--clock-offset", str(CLOCK_OFFSET_S))
    return f"server {sid} restarted with its clock {CLOCK_OFFSET_S * 1000:+.0f} ms off"


def _nothing(t: Target) -> str:
    return "nothing to undo: Berkeley corrects the clock"


def _healer(t: Target) -> str:
    return t.healer(t)


ALL = (
    Fault("partition", "isolate", _isolate, _heal_rules),
    Fault("partition", "bus-cut", _bus_cut, _heal_rules),
    Fault("partition", "broker-cut", _broker_cut, _heal_rules),
    Fault("loss", "loss", _loss, _heal_rules),
    Fault("kill", "kill", _kill_coordinator, _healer),
    Fault("kill", "kill-wipe", _kill_wipe, _healer),
    Fault("pause", "pause", _pause, _resume),
    Fault("clock", "clock", _clock, _nothing),
)
QUICK = ("isolate", "loss", "kill", "pause", "clock")
"""``--quick``: every kind once."""


def plan(kinds: list[str], quick: bool) -> list[Fault]:
    """The faults of a run, in order: of the kinds asked, every variant (one of each
    kind with ``quick``)."""
    return [f for f in ALL if f.kind in kinds and (not quick or f.label in QUICK)]


def hold(seconds: float) -> None:
    """Keep the fault in place (a sleep that holds a fault, not one that synchronizes)."""
    time.sleep(seconds)
