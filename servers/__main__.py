"""``python -m servers --id N``: run one server in the foreground until SIGTERM/SIGINT."""
from __future__ import annotations

import signal
from typing import Optional

import typer

from common import cli_options as O
from common import startup
from common.config import load_config

app = typer.Typer(add_completion=False, help="Run one server: storage, replication, election, clock sync.")


@app.command()
def main(
    server_id: int = typer.Option(..., "--id", min=1, max=99, help="This server's id (1-99); higher ids win elections."),
    port_base: O.OptInt = O.PortBase, host: O.OptStr = O.Host,
    data_dir: O.OptStr = O.DataDir, log_dir: O.OptStr = O.LogDir,
    clock_offset: float = typer.Option(0.0, "--clock-offset", help="Start this server's clock this many seconds off."),
    clock_drift_ppm: float = typer.Option(0.0, "--clock-drift-ppm", help="Clock drift in parts per million."),
    clock_chaos: bool = typer.Option(False, "--clock-chaos", envvar="SOCIAL_CLOCK_CHAOS",
                                     help="Push the clock randomly by up to ±1 s at random intervals."),
    drop_rate: Optional[float] = typer.Option(None, "--drop-rate", help="TEST ONLY: drop this fraction of incoming replication messages."),
    fsync: Optional[bool] = typer.Option(None, "--fsync/--no-fsync", help="fsync the log before acking (one fsync per loop turn): acks survive a power loss."),
) -> None:
    from common.clock import PhysicalClock
    from servers.node import Server
    with startup.one_line():         # a start-up problem is one line and exit code 1
        config = load_config(port_base=port_base, host=host, data_dir=data_dir, log_dir=log_dir,
                             drop_rate=drop_rate, fsync=fsync)
        server = Server(config, server_id, PhysicalClock(clock_offset, clock_drift_ppm, clock_chaos))
        signal.signal(signal.SIGTERM, server.request_leave)
        signal.signal(signal.SIGINT, server.request_leave)
        server.run()

if __name__ == "__main__":
    app()
