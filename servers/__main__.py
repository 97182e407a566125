"""``python -m servers --id N``: run one server in the foreground until SIGTERM/SIGINT.

A server halted because it could not write its folder (``servers/disk_watch.py``)
returns ``RESTART`` from ``run`` once the folder takes writes again, having
closed everything (its store and checkpointer, sockets, log; both locks let go).
Then this process re-executes itself in place (``os.execv``: the same pid, the
same arguments, environment and working directory), rather than resuming: a
fresh start from what is actually on disk. Nothing of the halted life's memory
survives -- not the events it applied that its log never took, not the peers'
vectors, not a half-done election -- so the new life cannot hold or announce
anything the disk lacks; it loads the folder and rejoins through the usual join
and sync, pulling what it missed while halted. The same pid means whoever
started the server (``run_all.py``, a supervisor, the tests) sees one process
that never exited, not a crash to restart.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Optional

import typer

from common import cli_options as O
from common import startup
from common.config import load_config

app = typer.Typer(**O.APP_SETTINGS, help="Run one server: storage, replication, election, clock sync.")


@app.command()
def main(
    server_id: int = typer.Option(..., "--id", min=1, max=99, help="This server's id (1-99); higher ids win elections."),
    port_base: O.OptInt = O.PortBase, host: O.OptStr = O.Host,
    bind: O.OptStr = O.Bind, advertise: O.OptStr = O.Advertise,
    data_dir: O.OptStr = O.DataDir, log_dir: O.OptStr = O.LogDir,
    clock_offset: float = typer.Option(0.0, "--clock-offset", help="Start this server's clock this many seconds off."),
    clock_drift_ppm: float = typer.Option(0.0, "--clock-drift-ppm", help="Clock drift in parts per million."),
    clock_chaos: bool = typer.Option(False, "--clock-chaos", envvar="SOCIAL_CLOCK_CHAOS",
                                     help="Push the clock randomly by up to ±1 s at random intervals."),
    drop_rate: Optional[float] = typer.Option(None, "--drop-rate", help="TEST ONLY: drop this fraction of incoming replication messages."),
    fsync: Optional[bool] = typer.Option(None, "--fsync/--no-fsync", help="fsync the log before acking (one fsync per loop turn): acks survive a power loss."),
    version: bool = O.version_option(),
) -> None:
    """Run server N in the foreground until Ctrl-C: it stores and replicates the
    events, joins elections and keeps its clock in step (Berkeley)."""
    from common.clock import PhysicalClock
    from servers.node import RESTART, Server
    startup.private_files()
    with startup.one_line():         # a start-up problem is one line and exit code 1
        config = load_config(port_base=port_base, host=host, bind=bind, advertise=advertise,
                             data_dir=data_dir, log_dir=log_dir, drop_rate=drop_rate, fsync=fsync)
        config.advertised_host()     # a wildcard --bind without --advertise: refused here
        server = Server(config, server_id, PhysicalClock(clock_offset, clock_drift_ppm, clock_chaos))
        signal.signal(signal.SIGTERM, server.request_leave)
        signal.signal(signal.SIGINT, server.request_leave)
        outcome = server.run()
    if outcome == RESTART:
        restart()


def restart() -> None:
    """This process, started again in place from the same command line."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, [sys.executable, "-m", "servers", *sys.argv[1:]])
    except OSError as exc:
        print(f"error: cannot restart {sys.executable}: {exc}", file=sys.stderr)
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
