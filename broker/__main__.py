"""``python -m broker``: run the broker in the foreground until SIGINT/SIGTERM."""
from __future__ import annotations

import sys

import typer
import zmq

from common import cli_options as O
from common.config import ConfigError, load_config

app = typer.Typer(add_completion=False, help="Run the broker: request load balancer and PUB/SUB bus.")


@app.command()
def main(port_base: O.OptInt = O.PortBase, host: O.OptStr = O.Host,
         data_dir: O.OptStr = O.DataDir, log_dir: O.OptStr = O.LogDir) -> None:
    from broker.broker import serve
    try:
        config = load_config(port_base=port_base, host=host, data_dir=data_dir, log_dir=log_dir)
        serve(config)
    except (ConfigError, zmq.ZMQError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
