"""The user's command line: ``python -m clients --user alice post "hello"``.

Every command sends one request (after a registration on the user's first
command) and prints the result, readable by default or as exactly one JSON
document with ``--json``. Errors print one ``error: ...`` line on stderr and
exit with code 1.

The session (ZeroMQ, the log) is imported only when a command runs, so
``--help`` and usage errors stay fast.
"""
from __future__ import annotations

import dataclasses
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


def call(options: GlobalOptions, op: str, args: dict, server: int | None) -> dict:
    from clients.session import UserSession
    with UserSession(options.config(), options.user, options.clock_offset,
                     options.clock_chaos) as session:
        return session.call(op, args, server)


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
    from clients.session import UserSession
    options: GlobalOptions = ctx.obj
    as_json = json or options.json
    stop_at = None if seconds is None else time.monotonic() + seconds

    def show(result: dict) -> None:
        for item in result.get("items", []):
            typer.echo(protocol.dumps(item).decode() if as_json else render.push(item))

    try:
        with UserSession(options.config(), options.user, options.clock_offset,
                         options.clock_chaos) as session:
            session.call(protocol.OP_USERS, {}, None)        # registers a first-time user
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
