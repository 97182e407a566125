"""The user's commands, run without typer: the CLI's fast path.

``python -m clients`` parses the common command lines here by hand (typer,
pydantic and rich cost ~75 ms of imports, more than the rest of a command) and
hands anything it does not recognize -- ``--help``, completion, a mistake -- to
the typer app in clients/cli.py, so help and error texts stay typer's. Both
paths run a command through ``execute``, as does every line of ``shell``.
``listen`` and ``shell`` live in clients/listen.py and clients/shell.py, which
``execute`` imports only to run them.

A command prints its result on stdout (``--json``: one JSON document) and
returns its exit code: 0, or 1 after one ``error: ...`` line on stderr (2 for a
usage error in our own words, such as ``--limit abc``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from dataclasses import dataclass

from clients import render
from common import protocol
from common.config import Config, ConfigError, load_config
from common.version import version_line

PASSWORD_ENV = "SOCIAL_PASSWORD"
"""For scripts and bots: the password, so that commands log in by themselves."""
PORT_BASE_ENV = "SOCIAL_PORT_BASE"
USAGE_EXIT = 2


class UsageError(Exception):
    """A command line that cannot run, said in our words (exit code 2)."""


@dataclass(frozen=True)
class GlobalOptions:
    """The options given before the command."""
    user: str | None = None
    port_base: int | None = None
    host: str | None = None
    data_dir: str | None = None
    log_dir: str | None = None
    timeout: float | None = None
    clock_offset: float = 0.0
    clock_chaos: bool = False
    json: bool = False
    port_base_from: str = "the default"
    """``--port-base``, ``SOCIAL_PORT_BASE`` or ``the default``: for the waiting line."""

    def config(self) -> Config:
        config = load_config(port_base=self.port_base, host=self.host,
                             data_dir=self.data_dir, log_dir=self.log_dir)
        if self.timeout is None:
            return config
        if self.timeout <= 0:
            raise ConfigError("--timeout must be positive")
        # a short deadline also shortens each try, so that it can retry at all
        return dataclasses.replace(
            config, request_deadline=self.timeout,
            request_timeout=min(config.request_timeout, self.timeout)).validate()


def whole_number(option: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{option} must be a whole number, not {text!r}") from None


def real_number(option: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{option} must be a number, not {text!r}") from None


def flag_value(text: str | None) -> bool:
    """A boolean from the environment, as typer reads one."""
    return (text or "").strip().lower() in ("1", "true", "yes", "on", "y", "t")


# --- parsing -----------------------------------------------------------------------
FLAG = "flag"
GLOBAL_OPTIONS = {"--user": "user", "--port-base": "port_base", "--host": "host",
                  "--data-dir": "data_dir", "--log-dir": "log_dir", "--timeout": "timeout",
                  "--clock-offset": "clock_offset", "--clock-chaos": "clock_chaos",
                  "--json": "json"}
GLOBAL_KINDS = {"port_base": int, "timeout": float, "clock_offset": float,
                "clock_chaos": FLAG, "json": FLAG}
SERVER = {"--server": int}
COMMANDS: dict[str, tuple[tuple[str, ...], dict]] = {
    # name: (its arguments, in order; its options and their kinds), "--json" on all
    "register": ((), {"--password-stdin": FLAG}),
    "login": ((), {"--password-stdin": FLAG}),
    "logout": ((), {}),
    "post": (("text",), {}),
    "feed": ((), {"--limit": int, **SERVER}),
    "follow": (("user",), {}),
    "unfollow": (("user",), {}),
    "following": ((), SERVER),
    "users": ((), SERVER),
    "dm": (("user", "text"), {}),
    "chat": (("user",), {"--limit": int, **SERVER}),
    "notifications": ((), SERVER),
    "status": ((), {"--wide": FLAG}),
    "listen": ((), {"--seconds": float}),
    "shell": ((), {}),
}


def _convert(option: str, kind, text: str):
    return whole_number(option, text) if kind is int else real_number(option, text)


def _split_option(word: str) -> tuple[str, str | None]:
    name, equals, value = word.partition("=")
    return (name, value) if equals else (word, None)


def _option_value(words: list[str], i: int, kind) -> tuple[object, int] | None:
    """The raw value of the option ``words[i]`` (``--x=v`` or ``--x v``; True for a
    flag) and the index of the next word; None if it is ill-formed."""
    value = _split_option(words[i])[1]
    if kind == FLAG:
        return (True, i + 1) if value is None else None
    if value is not None:
        return value, i + 1
    return (words[i + 1], i + 2) if i + 1 < len(words) else None


def parse_command(words: list[str]) -> tuple[str, dict] | None:
    """``feed --limit 5`` as ``("feed", {"limit": 5, "json": False})``; None for what
    this parser leaves to typer (help, unknown options, a missing argument).
    UsageError for a number that is not one."""
    if not words or words[0] not in COMMANDS:
        return None
    name, rest = words[0], words[1:]
    arguments, options = COMMANDS[name]
    options = {**options, "--json": FLAG}
    values: dict = {option[2:].replace("-", "_"): False
                    for option, kind in options.items() if kind == FLAG}
    positional: list[str] = []
    i = 0
    while i < len(rest):
        word = rest[i]
        if not word.startswith("-") or word == "-":
            positional.append(word)
            i += 1
            continue
        option = _split_option(word)[0]
        kind = options.get(option)
        taken = None if kind is None else _option_value(rest, i, kind)
        if taken is None:
            return None                        # --help, --, a typo: typer says
        value, i = taken
        values[option[2:].replace("-", "_")] = value if kind == FLAG else \
            _convert(option, kind, value)
    if len(positional) != len(arguments):
        return None
    values.update(zip(arguments, positional))
    return name, values


def parse(argv: list[str], environ=os.environ) -> tuple[GlobalOptions, str, dict] | None:
    """The global options, the command and its values; None to let typer parse ``argv``.
    UsageError for a number that is not one."""
    found: dict = {}
    i = 0
    while i < len(argv) and argv[i].startswith("--"):
        option = _split_option(argv[i])[0]
        if argv[i] == "--version":
            return GlobalOptions(), "version", {}
        key = GLOBAL_OPTIONS.get(option)
        kind = GLOBAL_KINDS.get(key, str)
        taken = None if key is None else _option_value(argv, i, kind)
        if taken is None:
            return None
        value, i = taken
        found[key] = value if kind in (str, FLAG) else _convert(option, kind, value)
    command = parse_command(argv[i:])
    if command is None:
        return None
    options = GlobalOptions(
        user=found.get("user", environ.get("SOCIAL_USER") or None),
        port_base=found.get("port_base"), host=found.get("host"),
        data_dir=found.get("data_dir"), log_dir=found.get("log_dir"),
        timeout=found.get("timeout", _env_float(environ, "SOCIAL_REQUEST_DEADLINE")),
        clock_offset=found.get("clock_offset",
                               _env_float(environ, "SOCIAL_CLOCK_OFFSET") or 0.0),
        clock_chaos=found.get("clock_chaos", flag_value(environ.get("SOCIAL_CLOCK_CHAOS"))),
        json=found.get("json", False),
        port_base_from=port_base_source("port_base" in found, environ))
    return options, command[0], command[1]


def _env_float(environ, name: str) -> float | None:
    raw = environ.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise UsageError(f"{name} must be a number, not {raw!r}") from None


def port_base_source(from_flag: bool, environ=os.environ) -> str:
    if from_flag:
        return "--port-base"
    return PORT_BASE_ENV if environ.get(PORT_BASE_ENV) else "the default"


# --- running -----------------------------------------------------------------------
def say(text: str) -> None:
    print(text, flush=True)


def warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def session_for(options: GlobalOptions):
    """A session on ``options``; its first unanswered request says what it waits for
    (once), and reads give up after ``READ_DEADLINE`` unless ``--timeout`` is given."""
    from clients.connection import READ_DEADLINE
    from clients.session import UserSession
    session = UserSession(options.config(), options.user, options.clock_offset,
                          options.clock_chaos, password=os.environ.get(PASSWORD_ENV))
    connection = session.connection
    connection.port_base_from = options.port_base_from
    if options.timeout is None:
        connection.read_deadline = READ_DEADLINE
    said = []

    def waiting(line: str) -> None:
        if not said:
            said.append(line)
            warn(line)
    connection.on_waiting = waiting
    return session


def opened(options: GlobalOptions, session):
    """``session`` as it is (a shell's, kept open), or a new one closed after use."""
    return contextlib.nullcontext(session) if session is not None else session_for(options)


REQUESTS = {
    # command: (operation, its arguments from the command's values, renderer)
    "post": (protocol.OP_POST, lambda v: {"text": v["text"]}, render.post),
    "feed": (protocol.OP_FEED, lambda v: {"limit": v.get("limit", protocol.DEFAULT_LIMIT)},
             render.feed),
    "follow": (protocol.OP_FOLLOW, lambda v: {"target": v["user"]}, render.follow),
    "unfollow": (protocol.OP_UNFOLLOW, lambda v: {"target": v["user"]}, render.unfollow),
    "following": (protocol.OP_FOLLOWING, lambda v: {}, render.following),
    "users": (protocol.OP_USERS, lambda v: {}, render.users),
    "dm": (protocol.OP_DM, lambda v: {"to": v["user"], "text": v["text"]}, render.dm),
    "chat": (protocol.OP_CHAT, lambda v: {"with": v["user"], "limit": v.get("limit", 50)},
             render.chat),
    "notifications": (protocol.OP_NOTIFICATIONS, lambda v: {}, render.notifications),
    "status": (protocol.OP_STATUS, lambda v: {}, render.status),
}


def execute(options: GlobalOptions, name: str, values: dict, session=None) -> int:
    """Run command ``name``; its exit code (see the module's docstring)."""
    from clients.connection import ClientError
    as_json = values.get("json", False) or options.json
    if name == "version":
        say(version_line())
        return 0
    try:
        if name in ("register", "login", "logout"):
            result = account(options, name, values.get("password_stdin", False), session)
            show = getattr(render, name)
        elif name == "listen":
            from clients.listen import listen
            return listen(options, values.get("seconds"), as_json, session)
        elif name == "shell":
            from clients.shell import shell
            return shell(options, sys.stdin)
        else:
            op, args_of, show = REQUESTS[name]
            args = args_of(values)
            with opened(options, session) as s:
                result = s.call(op, args, values.get("server"))
            if name == "status":
                args = {"wide": values.get("wide", False)}    # for the renderer only
    except UsageError as exc:
        warn(f"error: {exc}")
        return USAGE_EXIT
    except (ClientError, ConfigError, OSError) as exc:
        warn(f"error: {exc}")
        return 1
    except (KeyboardInterrupt, EOFError):
        if name not in ("register", "login"):
            raise
        warn("error: no password given")
        return 1
    if as_json:
        say(protocol.dumps(result).decode())
    else:
        say(show(result, options.user, args if name in REQUESTS else {}))
    return 0


def read_password(from_stdin: bool, confirm: bool) -> str:
    """``--password-stdin`` (one line), else ``SOCIAL_PASSWORD``, else asked twice
    (``confirm``) or once with getpass; never echoed, never logged."""
    from clients.connection import ClientError
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    import getpass
    first = getpass.getpass("password: ")
    if confirm and getpass.getpass("password again: ") != first:
        raise ClientError(protocol.ERR_BAD_REQUEST, "the two passwords differ")
    return first


def account(options: GlobalOptions, what: str, from_stdin: bool, session=None) -> dict:
    """register, login or logout, with the password read first."""
    from clients.connection import ClientError
    if options.user is None:
        raise ClientError(protocol.ERR_BAD_REQUEST,
                          f"{what} needs a user: pass --user NAME or set SOCIAL_USER")
    password = None if what == "logout" else read_password(from_stdin, what == "register")
    with opened(options, session) as s:
        if what == "register":
            return {**s.register(password), **s.login(password)}
        if what == "login":
            return s.login(password)
        return s.logout()


def main(argv: list[str]) -> int | None:
    """Run ``argv`` on the fast path; its exit code, or None to let typer run it."""
    try:
        parsed = parse(argv)
    except UsageError as exc:
        warn(f"error: {exc}")
        return USAGE_EXIT
    if parsed is None:
        return None
    return execute(*parsed)
