"""Convenience commands over the system's processes.

    python run_all.py up --servers 3     broker + servers 1..3 in the foreground; Ctrl-C stops all
"""
from __future__ import annotations

import signal
import sys
import time

import typer

from common import cli_options as O
from common.config import load_config
from common.processes import ProcessGroup

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Run the distributed social network: up, demo, timeline, bench.")


@app.callback()
def main() -> None:
    """Run the distributed social network: up, demo, timeline, bench."""


@app.command()
def up(servers: int = typer.Option(3, "--servers", min=1, max=99, help="How many servers to start."),
       clock_chaos: bool = typer.Option(False, "--clock-chaos", help="Servers' clocks jump randomly by up to ±1 s."),
       port_base: O.OptInt = O.PortBase, host: O.OptStr = O.Host,
       data_dir: O.OptStr = O.DataDir, log_dir: O.OptStr = O.LogDir) -> None:
    """Start the broker and servers 1..N in the foreground; Ctrl-C stops them all within 2 s."""
    config = load_config(port_base=port_base, host=host, data_dir=data_dir, log_dir=log_dir)
    group = ProcessGroup(config, {"SOCIAL_CLOCK_CHAOS": "1"} if clock_chaos else None)
    stopping = False

    def stop(*_args):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    group.start_broker()
    for server_id in range(1, servers + 1):
        group.start_server(server_id)
    print(f"broker on {config.endpoint(config.frontend_port)}, servers 1..{servers}; "
          f"logs in {config.log_dir}/, data in {config.data_dir}/. Ctrl-C stops all.")
    try:
        while not stopping:
            for name in list(group.procs):
                if not group.alive(name) and not stopping:
                    print(f"{name} exited with code {group.procs[name].returncode}", file=sys.stderr)
                    del group.procs[name]
            time.sleep(0.2)
    finally:
        group.stop_all(timeout=1.5)
        print("stopped")


if __name__ == "__main__":
    app()
