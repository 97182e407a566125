"""``python -m broker``: run the broker in the foreground until SIGINT/SIGTERM."""
from __future__ import annotations

import typer

from common import cli_options as O
from common import startup
from common.config import load_config

app = typer.Typer(**O.APP_SETTINGS, help="Run the broker: request load balancer and PUB/SUB bus.")


@app.command()
def main(port_base: O.OptInt = O.PortBase, host: O.OptStr = O.Host, bind: O.OptStr = O.Bind,
         data_dir: O.OptStr = O.DataDir, log_dir: O.OptStr = O.LogDir,
         clock_offset: float = typer.Option(0.0, "--clock-offset",
                                            help="Start the broker's clock this many seconds off."),
         clock_chaos: bool = typer.Option(False, "--clock-chaos", envvar="SOCIAL_CLOCK_CHAOS",
                                          help="Push the clock randomly by up to ±1 s at random "
                                               "intervals (it follows the coordinator's clock)."),
         version: bool = O.version_option()) -> None:
    """Run the broker in the foreground until Ctrl-C: it balances the users' requests
    over the serving servers and relays the servers' bus (PUB/SUB)."""
    from broker.broker import serve
    from common.clock import PhysicalClock
    startup.private_files()
    with startup.one_line():         # a start-up problem is one line and exit code 1
        config = load_config(port_base=port_base, host=host, bind=bind, data_dir=data_dir, log_dir=log_dir)
        serve(config, PhysicalClock(clock_offset, chaos=clock_chaos))

if __name__ == "__main__":
    app()
