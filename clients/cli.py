"""The user's command line: ``python -m clients --user alice post "hello"``.

``register`` claims a name with a password, ``login`` opens a session (its token
is kept in the user's state file), ``logout`` closes it on every server. Every
other command sends one request with the session's token (logging in first when
``SOCIAL_PASSWORD`` is set and no session is saved) and prints the result, readable by default or as exactly one JSON
document with ``--json``. Errors print one ``error: ...`` line on stderr and
exit with code 1.

The session (ZeroMQ, the log) is imported only when a command runs, so
``--help`` and usage errors stay fast.
"""
from __future__ import annotations

import dataclasses
import getpass
import os
import sys
from dataclasses import dataclass
from typing import Annotated, Callable

import typer

from clients import render
from common import protocol
from common.cli_options import DataDir, Host, LogDir, OptInt, OptStr, PortBase
from common.config import Config, ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="A distributed social network: post, follow, read, chat.")

Renderer = Callable[[dict, "str | None", dict], str]


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


JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as one JSON document.")]
ServerPin = Annotated[int | None, typer.Option("--server", help="Ask this server only.")]


@app.callback()
def main(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option(envvar="SOCIAL_USER",
                                             help="Act as this user.")] = None,
    port_base: OptInt = PortBase,
    host: OptStr = Host,
    data_dir: OptStr = DataDir,
    log_dir: OptStr = LogDir,
    timeout: Annotated[float | None, typer.Option(
        envvar="SOCIAL_REQUEST_DEADLINE",
        help="Seconds to keep retrying before giving up.")] = None,
    clock_offset: Annotated[float, typer.Option(
        envvar="SOCIAL_CLOCK_OFFSET",
        help="Start the physical clock this many seconds off.")] = 0.0,
    clock_chaos: Annotated[bool, typer.Option(
        "--clock-chaos", envvar="SOCIAL_CLOCK_CHAOS",
        help="Let the physical clock jump at random.")] = False,
    json: JsonFlag = False,
) -> None:
    ctx.obj = GlobalOptions(user, port_base, host, data_dir, log_dir, timeout,
                            clock_offset, clock_chaos, json)


def run(ctx: typer.Context, op: str, args: dict, show: Renderer, as_json: bool,
        server: int | None = None) -> None:
    """Run one operation and print its result; ``error: ...`` and exit 1 on failure."""
    options: GlobalOptions = ctx.obj
    from clients.connection import ClientError
    try:
        result = call(options, op, args, server)
    except (ClientError, ConfigError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json or options.json:
        typer.echo(protocol.dumps(result).decode())
    else:
        typer.echo(show(result, options.user, args))


PASSWORD_ENV = "SOCIAL_PASSWORD"
"""For scripts and bots: the password, so that commands log in by themselves."""


def session_for(options: GlobalOptions):
    from clients.session import UserSession
    return UserSession(options.config(), options.user, options.clock_offset,
                       options.clock_chaos, password=os.environ.get(PASSWORD_ENV))


def call(options: GlobalOptions, op: str, args: dict, server: int | None) -> dict:
    with session_for(options) as session:
        return session.call(op, args, server)


def read_password(from_stdin: bool, confirm: bool) -> str:
    """``--password-stdin`` (one line), else ``SOCIAL_PASSWORD``, else asked twice
    (``confirm``) or once with getpass; never echoed, never logged."""
    from clients.connection import ClientError
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    first = getpass.getpass("password: ")
    if confirm and getpass.getpass("password again: ") != first:
        raise ClientError(protocol.ERR_BAD_REQUEST, "the two passwords differ")
    return first


def account(ctx: typer.Context, what: str, show: Renderer, as_json: bool,
            from_stdin: bool = False) -> None:
    """register, login or logout: like ``run``, with the password read first."""
    from clients.connection import ClientError
    options: GlobalOptions = ctx.obj
    try:
        if options.user is None:
            raise ClientError(protocol.ERR_BAD_REQUEST,
                              f"{what} needs a user: pass --user NAME or set SOCIAL_USER")
        password = None if what == "logout" else read_password(from_stdin, what == "register")
        with session_for(options) as session:
            if what == "register":
                result = {**session.register(password), **session.login(password)}
            elif what == "login":
                result = session.login(password)
            else:
                result = session.logout()
    except (ClientError, ConfigError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except (KeyboardInterrupt, EOFError):
        typer.echo("error: no password given", err=True)
        raise typer.Exit(1) from None
    if as_json or options.json:
        typer.echo(protocol.dumps(result).decode())
    else:
        typer.echo(show(result, options.user, {}))


PasswordStdin = Annotated[bool, typer.Option(
    "--password-stdin", help="Read the password from the first line of stdin.")]


# --- accounts ----------------------------------------------------------------
@app.command()
def register(ctx: typer.Context, password_stdin: PasswordStdin = False,
             json: JsonFlag = False) -> None:
    """Claim your user name with a password (asked twice), and log in."""
    account(ctx, "register", render.register, json, password_stdin)


@app.command()
def login(ctx: typer.Context, password_stdin: PasswordStdin = False,
          json: JsonFlag = False) -> None:
    """Open a session: its token is kept in your state file (mode 0600)."""
    account(ctx, "login", render.login, json, password_stdin)


@app.command()
def logout(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Close your session on every server."""
    account(ctx, "logout", render.logout, json)


# --- the commands ------------------------------------------------------------
@app.command()
def post(ctx: typer.Context, text: str, json: JsonFlag = False) -> None:
    """Post TEXT for everyone who follows you."""
    run(ctx, protocol.OP_POST, {"text": text}, render.post, json)


@app.command()
def feed(ctx: typer.Context, limit: int = protocol.DEFAULT_LIMIT,
         server: ServerPin = None, json: JsonFlag = False) -> None:
    """The newest posts: the users you follow first."""
    run(ctx, protocol.OP_FEED, {"limit": limit}, render.feed, json, server)


@app.command()
def follow(ctx: typer.Context, user: str, json: JsonFlag = False) -> None:
    """Follow USER."""
    run(ctx, protocol.OP_FOLLOW, {"target": user}, render.follow, json)


@app.command()
def unfollow(ctx: typer.Context, user: str, json: JsonFlag = False) -> None:
    """Stop following USER."""
    run(ctx, protocol.OP_UNFOLLOW, {"target": user}, render.unfollow, json)


@app.command()
def following(ctx: typer.Context, server: ServerPin = None, json: JsonFlag = False) -> None:
    """The users you follow."""
    run(ctx, protocol.OP_FOLLOWING, {}, render.following, json, server)


@app.command()
def users(ctx: typer.Context, server: ServerPin = None, json: JsonFlag = False) -> None:
    """Everyone who has used the network."""
    run(ctx, protocol.OP_USERS, {}, render.users, json, server)


@app.command()
def dm(ctx: typer.Context, user: str, text: str, json: JsonFlag = False) -> None:
    """Send USER a private message."""
    run(ctx, protocol.OP_DM, {"to": user, "text": text}, render.dm, json)


@app.command()
def chat(ctx: typer.Context, user: str, limit: int = 50,
         server: ServerPin = None, json: JsonFlag = False) -> None:
    """Your private messages with USER, oldest first."""
    run(ctx, protocol.OP_CHAT, {"with": user, "limit": limit}, render.chat, json, server)


@app.command()
def notifications(ctx: typer.Context, server: ServerPin = None,
                  json: JsonFlag = False) -> None:
    """New posts from the users you follow since you last asked."""
    run(ctx, protocol.OP_NOTIFICATIONS, {}, render.notifications, json, server)


@app.command()
def status(ctx: typer.Context, json: JsonFlag = False) -> None:
    """The servers as the broker sees them."""
    run(ctx, protocol.OP_STATUS, {}, render.status, json)


LISTEN_WAIT = 10.0
"""Seconds one listen request may stay parked on a server before it is asked again."""


class ListenLoop:
    """The client side of ``listen``: one long poll after another.

    A listen parked on a server takes the items that arrive while it waits and
    marks them shown. If the user stops while one is parked, ``cancel`` sends it
    again with the same request id and no wait: the server drops the parked one
    and answers at once, so nothing is marked shown that was not printed."""

    def __init__(self, session, since: int, show) -> None:
        self.session, self.since, self.show = session, since, show
        self.in_flight = None                # the parked request (protocol.Request)

    def poll(self, wait: float) -> None:
        conn = self.session.connection
        self.in_flight = conn.build(protocol.OP_LISTEN, {"wait": round(wait, 3), "since": self.since})
        self.show(conn.exchange(self.in_flight))
        self.in_flight = None
        self.session.log.flush()

    def cancel(self) -> None:
        from clients.connection import ClientError
        if self.in_flight is None:
            return
        conn = self.session.connection
        conn.config = dataclasses.replace(conn.config, request_deadline=1.0)
        try:
            self.show(conn.exchange(protocol.with_args(self.in_flight, wait=0.0)))
        except (ClientError, KeyboardInterrupt):
            pass


@app.command()
def listen(ctx: typer.Context,
           seconds: Annotated[float | None, typer.Option(
               "--seconds", help="Stop after this many seconds (default: until Ctrl-C).")] = None,
           json: Annotated[bool, typer.Option(
               "--json", help="Print one JSON object per line.")] = False) -> None:
    """Live: posts by the users you follow and messages to you, as they happen.

    Each item is shown once: pushed items are marked shown on the servers, so
    `notifications` will not list them again. Messages sent before you started
    listening are in `chat`.
    """
    import time
    from clients.connection import ClientError
    options: GlobalOptions = ctx.obj
    as_json = json or options.json
    stop_at = None if seconds is None else time.monotonic() + seconds

    def show(result: dict) -> None:
        for item in result.get("items", []):
            typer.echo(protocol.dumps(item).decode() if as_json else render.push(item))

    try:
        with session_for(options) as session:
            session.call(protocol.OP_USERS, {}, None)        # logs in, if need be
            since = session.lamport.value
            if not as_json:
                typer.echo(f"listening as {options.user} (Ctrl-C to stop)")
            listening = ListenLoop(session, since, show)
            try:
                while stop_at is None or time.monotonic() < stop_at:
                    left = LISTEN_WAIT if stop_at is None else stop_at - time.monotonic()
                    listening.poll(max(0.0, min(LISTEN_WAIT, left)))
            except KeyboardInterrupt:
                listening.cancel()
    except KeyboardInterrupt:
        pass
    except (ClientError, ConfigError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
