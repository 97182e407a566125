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

if "msgspec" not in sys.modules and "typing_extensions" not in sys.modules:
    # msgspec tries typing_extensions (~4 ms of imports, inspect among them) for kinds of
    # annotations our messages do not use, and falls back to typing without it: a command
    # imports msgspec without it; anything imported later (typer's help) gets the real one
    sys.modules["typing_extensions"] = None
    try:
        import msgspec  # noqa: E402,F401
    finally:
        del sys.modules["typing_extensions"]

from clients import commands  # noqa: E402 - after the umask is set

code = commands.main(sys.argv[1:])
if code is None:
    from clients.cli import app
    app(prog_name="python -m clients")
sys.exit(code)
