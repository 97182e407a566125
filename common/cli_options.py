"""Command-line options every process shares (typer), each also read from the environment."""
from __future__ import annotations

from typing import Optional

import typer

PortBase = typer.Option(None, "--port-base", envvar="SOCIAL_PORT_BASE",
                        help="Base port; every socket's port derives from it (default 5555).")
Host = typer.Option(None, "--host", envvar="SOCIAL_HOST",
                    help="The broker's address: users and servers connect to it (default 127.0.0.1).")
Bind = typer.Option(None, "--bind", envvar="SOCIAL_BIND",
                    help="Address to bind, 0.0.0.0 for every interface (default: --host).")
Advertise = typer.Option(None, "--advertise", envvar="SOCIAL_ADVERTISE",
                         help="Address the other servers dial this one at (default: --bind; "
                              "required when --bind is a wildcard).")
DataDir = typer.Option(None, "--data-dir", envvar="SOCIAL_DATA_DIR", help="Data folder (default data/).")
LogDir = typer.Option(None, "--log-dir", envvar="SOCIAL_LOG_DIR", help="Log folder (default logs/).")

APP_SETTINGS = {"add_completion": True, "rich_markup_mode": None}
"""Every typer app's: shell completion on, and plain help (typer's rich help shows a
flag with a ``<bool>`` placeholder, as if it took a value)."""


def _print_version(value: bool) -> None:
    if value:
        from common.version import version_line
        typer.echo(version_line())
        raise typer.Exit()


def version_option():
    """``--version`` of an app's callback (or single command): prints ``social 0.15.0``."""
    return typer.Option(False, "--version", is_eager=True, expose_value=False,
                        callback=_print_version, help="Print the version and exit.")


OptInt = Optional[int]
OptStr = Optional[str]
