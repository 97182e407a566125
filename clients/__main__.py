"""``python -m clients ...``: the user's command line (see clients/cli.py)."""
from clients.cli import app
from common.startup import private_files

private_files()              # a user's state file (with its session token) is theirs alone

app(prog_name="python -m clients")
