"""``python -m clients ...``: the user's command line.

The common command lines run on the fast path (clients/commands.py), without
importing typer; anything else (help, completion, a usage error) goes to the
typer app (clients/cli.py)."""
import sys
import types

if sys.argv[1:] == ["--version"]:          # nothing else to load
    from common.version import version_line
    print(version_line())
    sys.exit(0)

from common.startup import private_files  # noqa: E402

private_files()              # a user's state file (with its session token) is theirs alone


class _OnDemand(types.ModuleType):
    """Stands for a module, imported the first time one of its names is used."""

    def __getattr__(self, name: str):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        import importlib
        return getattr(importlib.import_module(self.__name__), name)


def _import_lean() -> None:
    """msgspec and dataclasses without two modules a command never uses.

    msgspec tries typing_extensions (~4 ms of imports) for kinds of annotations our
    messages do not use, and falls back to typing without it; dataclasses imports
    inspect (~7 ms) for one call, made only for a class without a docstring (every one
    a command defines has one), and the stand-in would still answer it. Only for these
    two imports: anything imported later (typer's help) gets the real modules."""
    if any(name in sys.modules for name in ("msgspec", "dataclasses", "typing_extensions",
                                             "inspect")):
        return
    stand_in = _OnDemand("inspect")
    sys.modules["typing_extensions"] = None
    sys.modules["inspect"] = stand_in
    try:
        import dataclasses  # noqa: F401
        import msgspec  # noqa: F401
    finally:
        del sys.modules["typing_extensions"]
        if sys.modules.get("inspect") is stand_in:
            del sys.modules["inspect"]


_import_lean()

from clients import commands  # noqa: E402 - after the umask is set

code = commands.main(sys.argv[1:])
if code is None:
    from clients.cli import app
    app(prog_name="python -m clients")
sys.exit(code)
