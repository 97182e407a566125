"""``python -m clients ...``: the user's command line (see clients/cli.py)."""
from clients.cli import app

app(prog_name="python -m clients")
