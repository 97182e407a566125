"""``python -m clients ...``: the user's command line.

The common command lines run on the fast path (clients/commands.py), without
importing typer; anything else (help, completion, a usage error) goes to the
typer app (clients/cli.py)."""
import sys

if sys.argv[1:] == ["--version"]:          # nothing else to load
    from common.version import version_line
    print(version_line())
    sys.exit(0)

from common.startup import private_files  # noqa: E402

private_files()              # a user's state file (with its session token) is theirs alone

from clients import commands  # noqa: E402 - after the umask is set

code = commands.main(sys.argv[1:])
if code is None:
    from clients.cli import app
    app(prog_name="python -m clients")
sys.exit(code)
