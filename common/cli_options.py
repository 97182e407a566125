"""Command-line options every process shares (typer), each also read from the environment."""
from __future__ import annotations

from typing import Optional

import typer

PortBase = typer.Option(None, "--port-base", envvar="SOCIAL_PORT_BASE",
                        help="Base port; every socket's port derives from it (default 5555).")
Host = typer.Option(None, "--host", envvar="SOCIAL_HOST", help="Address to bind/connect (default 127.0.0.1).")
DataDir = typer.Option(None, "--data-dir", envvar="SOCIAL_DATA_DIR", help="Data folder (default data/).")
LogDir = typer.Option(None, "--log-dir", envvar="SOCIAL_LOG_DIR", help="Log folder (default logs/).")

OptInt = Optional[int]
OptStr = Optional[str]
