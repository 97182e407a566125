"""Convenience commands over the system's processes.

    python run_all.py up --servers 3     broker + servers 1..3 + the web panel; Ctrl-C stops all
    python run_all.py demo               the whole system at work, narrated, in under a minute
    python run_all.py timeline           every process's log merged (--compact, --only, --user…)
    python run_all.py admit N KEY        let server N on another host in (its public key)
    python run_all.py nemesis --quick    as root: faults in network namespaces, checked
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

from typing import Optional

import typer

from common import cli_options as O
from common.config import DEFAULT_LOG_DIR, load_config
from common.log_lines import READY
from common.processes import ProcessGroup

WebPort = typer.Option(8080, "--web-port", envvar="SOCIAL_WEB_PORT", min=0, max=65535,
                       help="The web panel's port (a free one if it is taken; 0: no panel).")


def start_web(group: ProcessGroup, wanted: int, exact: bool = False) -> int | None:
    """The web gateway in ``group`` on ``wanted`` (or a free port if it is taken, unless
    ``exact``), once it answers; its port, or None (said on stderr) if it could not start."""
    from web import local
    if wanted == 0:
        return None
    try:
        port = wanted if exact else local.usable_port(wanted)
        local.start(group, port)
        local.wait_ready(port, alive=lambda: group.alive(local.NAME))
    except (OSError, RuntimeError, TimeoutError) as exc:
        said = group.stderr_since_start(local.NAME).strip().splitlines() if local.NAME in group.procs else []
        print(f"web panel not started: {exc}{': ' + said[-1] if said else ''}", file=sys.stderr)
        return None
    taken = f" ({wanted} is taken)" if port != wanted else ""
    print(f"web panel: http://127.0.0.1:{port}{taken}", flush=True)
    return port


app = typer.Typer(**O.APP_SETTINGS, no_args_is_help=True,
                  help="Run the distributed social network: up, demo, timeline, bench, admit, nemesis.")


@app.callback()
def main(version: bool = O.version_option()) -> None:
    """Run the distributed social network: up, demo, timeline, bench, admit, nemesis."""
    from common.startup import private_files
    private_files()              # logs, data and keys of every process it starts: owner-only


READY_TIMEOUT = 30.0
"""Seconds ``up`` waits for every server to serve before it says which do not."""


def refusal(config, servers: int, web_port: int | None) -> str | None:
    """Why ``up`` must not start on ``config`` (one line), or None: a port it would
    bind is taken, or a live process owns its data folder or a server's folder."""
    from common.ownership import InUse
    from common.processes import cluster_ports, folder_owner, ports_taken
    problems = []
    taken = ports_taken(cluster_ports(config.port_base, servers)
                        + ([web_port] if web_port else []))
    if taken:
        problems.append(f"port{'s' if len(taken) > 1 else ''} "
                        f"{', '.join(map(str, taken))} in use (port base {config.port_base}: "
                        f"is another `up` running? --port-base picks another)")
    for folder in [Path(config.data_dir)] + [config.server_data_dir(i)
                                             for i in range(1, servers + 1)]:
        try:
            folder_owner(folder)
        except InUse as exc:
            problems.append(str(exc))
            break
    return "; ".join(problems) or None


@app.command()
def up(servers: int = typer.Option(3, "--servers", min=1, max=99, help="How many servers to start."),
       clock_chaos: bool = typer.Option(False, "--clock-chaos", help="Servers' clocks jump randomly by up to ±1 s."),
       port_base: O.OptInt = O.PortBase, host: O.OptStr = O.Host,
       data_dir: O.OptStr = O.DataDir,
       log_dir: O.OptStr = typer.Option(None, "--log-dir", envvar="SOCIAL_LOG_DIR",
                                        help="Where each run's log folder goes (default "
                                             "logs): run-<time>/, and latest links to it."),
       web_port: Optional[int] = typer.Option(
           None, "--web-port", envvar="SOCIAL_WEB_PORT", min=0, max=65535,
           help="The web panel's port: given, it must be free (0: no panel); by default "
                "8080, or a free one if 8080 is taken.")) -> None:
    """Start the broker, servers 1..N and the web panel in the foreground; Ctrl-C stops
    them all within 2 s. Refuses (exit 1) if its ports or data folder are in use; says
    `ready: N servers serving` once they serve; exits 1 if the broker or every server dies."""
    from common.ownership import InUse, claim, release
    from common.processes import new_run_folder
    config = load_config(port_base=port_base, host=host, data_dir=data_dir,
                         log_dir=log_dir or DEFAULT_LOG_DIR)
    # absolute: the processes run in the project folder, `up` and its checks here
    config = dataclasses.replace(config, data_dir=str(Path(config.data_dir).resolve()))
    why = refusal(config, servers, web_port or None)
    lock = None
    if why is None:
        try:                      # held while up runs: a second up on this folder is refused
            lock = claim(Path(config.data_dir) / UP_LOCK, record_pid=True, orphan_wait=0)
        except (InUse, OSError) as exc:
            why = str(exc)
    if why is not None:
        typer.echo(f"error: not started: {why}", err=True)
        raise typer.Exit(1)
    config = dataclasses.replace(config, log_dir=str(new_run_folder(config.log_dir, "run")))
    group = ProcessGroup(config, {"SOCIAL_CLOCK_CHAOS": "1"} if clock_chaos else None)
    stopping = False

    def stop(*_args):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code, watch = 0, None
    try:
        group.start_broker()
        for server_id in range(1, servers + 1):
            group.start_server(server_id)
        print(f"broker on {config.endpoint(config.frontend_port)}, servers 1..{servers}; "
              f"logs in {config.log_dir}/ (also {Path(config.log_dir).parent / 'latest'}/), "
              f"data in {config.data_dir}/ (CurveZMQ keys in {config.data_dir}/keys/). "
              f"Ctrl-C stops all.", flush=True)
        watch = Readiness(config, servers)
        if web_port != 0:
            start_web(group, web_port or 8080, exact=web_port is not None)
        dead: list[str] = []
        while not stopping:
            for name in list(group.procs):
                if not group.alive(name):
                    said = group.stderr_since_start(name).strip().splitlines()
                    why = f": {said[-1]}" if said else ""      # e.g. its port is in use
                    print(f"{name} exited with code {group.procs[name].returncode}{why}",
                          file=sys.stderr, flush=True)
                    dead.append(name)
                    del group.procs[name]
            if "broker" in dead or not any(n.startswith("server-") for n in group.procs):
                names = sorted(dead, key=lambda n: (n != "broker", len(n), n))   # server-2 before -10
                print(f"error: stopping: {', '.join(names)} died", file=sys.stderr, flush=True)
                code = 1
                break
            watch.poll()
            time.sleep(0.2)
    finally:
        group.stop_all(timeout=1.5)
        if watch is not None:
            watch.close()
        print("stopped", flush=True)
        release(lock)
    raise typer.Exit(code)


UP_LOCK = "up.lock"
"""The file in the data folder a running ``up`` locks (it holds its pid)."""


class Readiness:
    """Says ``ready: N servers serving`` once the broker's status shows them all
    serving, or after READY_TIMEOUT how many do."""

    def __init__(self, config, servers: int) -> None:
        import zmq
        from common.broker_client import BrokerClient
        from common.keys import cluster_broker_key
        self.servers = servers
        self.ctx = zmq.Context()
        self.client = BrokerClient(self.ctx, config.endpoint(config.frontend_port),
                                   cluster_broker_key(config.data_dir), config=config)
        self.deadline = time.monotonic() + READY_TIMEOUT
        self.done = False

    def poll(self) -> None:
        from common.cluster_status import rows_by_id, serving
        if self.done:
            return
        count = len(serving(rows_by_id(self.client.status(0.5))))
        if count >= self.servers:
            print(READY.format(count=count), flush=True)
            self.done = True
        elif time.monotonic() >= self.deadline:
            print(f"not ready after {READY_TIMEOUT:g} s: {count} of {self.servers} servers "
                  f"serving (see the servers' logs)", file=sys.stderr, flush=True)
            self.done = True

    def close(self) -> None:
        self.client.close()
        self.ctx.term()


@app.command()
def demo(seconds: float = typer.Option(45.0, "--seconds", min=15.0,
                                       help="About how long the demo runs."),
         servers: int = typer.Option(3, "--servers", min=3, max=9,
                                     help="Servers to start with (one more joins)."),
         users: int = typer.Option(5, "--users", min=2, max=12, help="Bot users."),
         port_base: O.OptInt = typer.Option(None, "--port-base", envvar="SOCIAL_PORT_BASE",
                                            help="Base port (default 5555, or a free one if "
                                                 "5555 is taken)."),
         host: O.OptStr = O.Host,
         data_dir: O.OptStr = typer.Option(None, "--data-dir",
                                           help="Data folder (default data/demo-<time>)."),
         log_dir: O.OptStr = typer.Option(None, "--log-dir",
                                          help="Log folder (default logs/demo-<time>)."),
         web_port: int = WebPort) -> None:
    """The whole system at work, narrated: users, a killed coordinator, a join, a removal,
    clock sync; ends with a summary and a check that no acknowledged write was lost.
    The web panel watches it live (its Cluster page, the bots' posts)."""
    from clients.demo.run import PID_FILE, DemoProcesses, demo_folders, run_demo
    from common.processes import usable_port_base
    data_dir, log_dir = demo_folders(data_dir, log_dir)
    if port_base is None:
        port_base = usable_port_base(load_config().port_base)
    config = load_config(port_base=port_base, host=host, data_dir=data_dir, log_dir=log_dir)
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    # the panel waits for the demo's broker key; its pid is listed with the demo's own
    web = DemoProcesses(config, {}, Path(log_dir) / PID_FILE)
    try:
        start_web(web, web_port)
        code = run_demo(seconds, servers, users, port_base, host, data_dir, log_dir)
    finally:
        web.stop_all(timeout=1.5)
    raise typer.Exit(code)


@app.command()
def timeline(follow: bool = typer.Option(False, "--follow", "-f",
                                         help="Keep printing new lines as they are written."),
             window: float = typer.Option(1.0, "--window", min=0.0,
                                          help="--follow: seconds a line waits for earlier "
                                               "lines of other logs before it is printed."),
             order: str = typer.Option("time", "--order",
                                       help="time: by each line's synchronized clock (as it "
                                            "happened); lamport: by (Lamport clock, process), "
                                            "exact causal order."),
             user: O.OptStr = typer.Option(None, "--user",
                                           help="Only that user's client and the lines naming them."),
             only: O.OptStr = typer.Option(None, "--only",
                                           help="Only one kind: writes, membership, election, clock."),
             hide: str = typer.Option("", "--hide",
                                      help="Leave out these message types, e.g. HB,BEAT,ACK."),
             since: O.OptStr = typer.Option(None, "--since",
                                            help="From this time (HH:MM:SS or YYYY-MM-DD HH:MM:SS, "
                                                 "UTC as in the logs), or -30s before the end, "
                                                 "+10s after the start."),
             until: O.OptStr = typer.Option(None, "--until", help="Up to this time (as --since)."),
             compact: bool = typer.Option(False, "--compact",
                                          help="Each write's request, EVENTs and ACKs as one line: "
                                               "'post 7a38 by alice held by 3 in 1.2 ms'."),
             log_dir: O.OptStr = O.LogDir) -> None:
    """Every process's log merged into one timeline (by default the newest run's,
    logs/latest), in time or Lamport order, filtered and folded as asked."""
    from common.processes import LATEST
    from common.timeline import View, follow_timeline, print_timeline
    folder = Path(load_config(log_dir=log_dir).log_dir)
    if (folder / LATEST).is_dir():          # a folder of runs: its newest
        folder = folder / LATEST
    if not folder.is_dir():
        typer.echo(f"error: no log folder {folder}/", err=True)
        raise typer.Exit(1)
    try:
        view = View(order=order, user=user, only=only, hide=frozenset(hide.split(",")),
                    since=since, until=until, compact=compact)
        if follow and compact:
            raise ValueError("--compact needs each write's whole trail: not with --follow")
        if follow:
            follow_timeline(folder, window, view=view)
        else:
            print_timeline(folder, view=view)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:                 # `| head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@app.command()
def admit(server_id: int = typer.Argument(..., min=1, max=99, help="The server's id (1-99)."),
          key: str = typer.Argument(..., help="Its CURVE public key (40 Z85 characters), "
                                              "or a key file holding it (server-N.key)."),
          data_dir: O.OptStr = O.DataDir) -> None:
    """Admit server N (on another host) to the cluster's allowlist: the broker and every
    server on this data folder let its key in within a second, without a restart."""
    from common import keys
    folder = load_config(data_dir=data_dir).data_dir
    try:
        public = keys.parse_key_argument(key)
        path = keys.admit(folder, server_id, public)
    except (keys.KeyProblem, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    typer.echo(f"admitted server-{server_id} with key {public.decode()} ({path})")


@app.command()
def bench(quick: bool = typer.Option(False, "--quick", help="About 35 s: smaller store, ~1 s per phase (for CI)."),
          out: str = typer.Option("bench.json", "--out", help="Write the figures here as JSON."),
          stored: Optional[int] = typer.Option(
              None, "--stored", min=1000,
              help="Posts stored for the growth, read and recovery phases (default 100,000).")) -> None:
    """Measure throughput, CPU per request, latency, growth, reads, replication lag and
    recovery; print a table."""
    from clients.bench.run import run_bench
    raise typer.Exit(run_bench(quick=quick, out=out, stored=stored))


@app.command()
def nemesis(quick: bool = typer.Option(False, "--quick",
                                       help="Every fault kind once, briefly: well under 2 minutes (CI)."),
            faults: str = typer.Option("partition,loss,kill,pause,clock", "--faults",
                                       help="Comma-separated fault kinds to inject."),
            seconds: Optional[float] = typer.Option(None, "--seconds", min=1.0,
                                                    help="Seconds each fault is held (default 20; "
                                                         "5 with --quick)."),
            servers: int = typer.Option(3, "--servers", min=3, max=5, help="Servers (3-5)."),
            json_out: Optional[str] = typer.Option(None, "--json",
                                                   help="Write the figures here (default: "
                                                        "nemesis.json in the run folder).")) -> None:
    """As root: the cluster in network namespaces on a bridge, under a recorded load,
    with partitions, loss, kills, pauses and clock offsets; prints one table of what the
    users saw (acks, lost writes, duplicates, stale reads, split coordinators, clocks)."""
    from clients.nemesis.run import run_nemesis
    kinds = [k.strip() for k in faults.split(",") if k.strip()]
    raise typer.Exit(run_nemesis(quick, kinds, seconds, servers, json_out))


if __name__ == "__main__":
    app()
