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


class _OnDemand(types.ModuleType):
    """Stands for a module, imported the first time one of its names is used."""

    def __getattr__(self, name: str):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        import importlib
        return getattr(importlib.import_module(self.__name__), name)


def _import_lean() -> None:
    """zmq, msgspec and dataclasses without four modules a command never uses.

    msgspec tries typing_extensions (~4 ms of imports) for kinds of annotations our
    messages do not use, and falls back to typing without it; dataclasses imports
    inspect (~7 ms) for one call, made only for a class without a docstring (every one
    a command defines has one); zmq imports json (~2 ms) for send_json and random
    (~2 ms) for bind_to_random_port. The stand-ins would still answer any use. Only
    for these imports: anything imported later (typer's help) gets the real modules."""
    hidden = {"typing_extensions": None, "inspect": _OnDemand("inspect"),
              "json": _OnDemand("json"), "random": _OnDemand("random")}
    if any(name in sys.modules for name in (*hidden, "zmq", "msgspec", "dataclasses")):
        return
    sys.modules.update(hidden)
    try:
        import dataclasses  # noqa: F401
        import msgspec  # noqa: F401
        import zmq  # noqa: F401
    finally:
        for name, stand_in in hidden.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]


_import_lean()

from common.startup import private_files  # noqa: E402

private_files()              # a user's state file (with its session token) is theirs alone

from clients import commands  # noqa: E402 - after the umask is set

code = commands.main(sys.argv[1:])
if code is None:
    from clients.cli import app
    app(prog_name="python -m clients")
sys.exit(code)
