"""``python -m web``: the web panel (web/gateway.py), with the conventions of every
entry point: ``--version`` (answered without loading the gateway), shell completion,
plain help."""
import sys

if sys.argv[1:] == ["--version"]:
    from common.version import version_line
    print(version_line())
    sys.exit(0)

import typer  # noqa: E402

from common.cli_options import APP_SETTINGS  # noqa: E402
from web import gateway  # noqa: E402

app = typer.Typer(**APP_SETTINGS, pretty_exceptions_enable=False, help=gateway.app.info.help)
app.command()(gateway.main)

if __name__ == "__main__":
    app()
