"""The user's command line: ``python -m clients --user alice post "hello"``.

``register`` claims a name with a password, ``login`` opens a session (its token
is kept in the user's state file), ``logout`` closes it on every server. Every
other command sends one request with the session's token (logging in first when
``SOCIAL_PASSWORD`` is set and no session is saved) and prints the result, readable by default or as exactly one JSON
document with ``--json``. Errors print one ``error: ...`` line on stderr and
exit with code 1.

This is the typer app: its help, completion and usage errors. ``python -m
clients`` runs the common command lines without it (clients/commands.py, the
fast path) and both run a command through ``commands.execute``.
"""
from __future__ import annotations

from typing import Annotated

import typer

from clients import commands
from clients.commands import GlobalOptions
from common.cli_options import (APP_SETTINGS, DataDir, Host, LogDir, OptInt, OptStr,
                                PortBase, version_option)

app = typer.Typer(**APP_SETTINGS, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="A distributed social network: post, follow, read, chat.")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as one JSON document.")]
ServerPin = Annotated[int | None, typer.Option("--server", help="Ask this server only.")]
UserArg = Annotated[str, typer.Argument(help="The user's name.")]
TextArg = Annotated[str, typer.Argument(help="The text (at most 280 characters).")]


def limit_option(default: int):
    return Annotated[str, typer.Option("--limit", metavar="N",
                                       help="At most N items.")]


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
        help="Seconds to keep retrying before giving up (default: 5 for reads, "
             "20 for writes).")] = None,
    clock_offset: Annotated[float, typer.Option(
        envvar="SOCIAL_CLOCK_OFFSET",
        help="Start the physical clock this many seconds off.")] = 0.0,
    clock_chaos: Annotated[bool, typer.Option(
        "--clock-chaos", envvar="SOCIAL_CLOCK_CHAOS",
        help="Let the physical clock jump at random.")] = False,
    json: JsonFlag = False,
    version: bool = version_option(),
) -> None:
    source = ctx.get_parameter_source("port_base")
    from_flag = source is not None and source.name == "COMMANDLINE"
    ctx.obj = GlobalOptions(user, port_base, host, data_dir, log_dir, timeout,
                            clock_offset, clock_chaos, json,
                            commands.port_base_source(from_flag))


def finish(ctx: typer.Context, name: str, values: dict) -> None:
    """Run command ``name`` (commands.execute); exit with its code if it failed."""
    code = commands.execute(ctx.obj, name, values)
    if code:
        raise typer.Exit(code)


def whole(option: str, text: str) -> int:
    """``text`` as a number, or our own error line and exit code 2."""
    try:
        return commands.whole_number(option, text)
    except commands.UsageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(commands.USAGE_EXIT) from None


PasswordStdin = Annotated[bool, typer.Option(
    "--password-stdin", help="Read the password from the first line of stdin.")]


# --- accounts ----------------------------------------------------------------
@app.command()
def register(ctx: typer.Context, password_stdin: PasswordStdin = False,
             json: JsonFlag = False) -> None:
    """Claim your user name with a password (asked twice), and log in."""
    finish(ctx, "register", {"password_stdin": password_stdin, "json": json})


@app.command()
def login(ctx: typer.Context, password_stdin: PasswordStdin = False,
          json: JsonFlag = False) -> None:
    """Open a session: its token is kept in your state file (mode 0600)."""
    finish(ctx, "login", {"password_stdin": password_stdin, "json": json})


@app.command()
def logout(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Close your session on every server."""
    finish(ctx, "logout", {"json": json})


# --- the commands ------------------------------------------------------------
@app.command()
def post(ctx: typer.Context, text: TextArg, json: JsonFlag = False) -> None:
    """Post TEXT for everyone who follows you."""
    finish(ctx, "post", {"text": text, "json": json})


@app.command()
def feed(ctx: typer.Context, limit: limit_option(20) = "20",
         server: ServerPin = None, json: JsonFlag = False) -> None:
    """The newest posts: the users you follow first."""
    finish(ctx, "feed", {"limit": whole("--limit", limit), "server": server, "json": json})


@app.command()
def follow(ctx: typer.Context, user: UserArg, json: JsonFlag = False) -> None:
    """Follow USER."""
    finish(ctx, "follow", {"user": user, "json": json})


@app.command()
def unfollow(ctx: typer.Context, user: UserArg, json: JsonFlag = False) -> None:
    """Stop following USER."""
    finish(ctx, "unfollow", {"user": user, "json": json})


@app.command()
def following(ctx: typer.Context, server: ServerPin = None, json: JsonFlag = False) -> None:
    """The users you follow."""
    finish(ctx, "following", {"server": server, "json": json})


@app.command()
def users(ctx: typer.Context, server: ServerPin = None, json: JsonFlag = False) -> None:
    """Everyone who has used the network."""
    finish(ctx, "users", {"server": server, "json": json})


@app.command()
def dm(ctx: typer.Context, user: UserArg, text: TextArg, json: JsonFlag = False) -> None:
    """Send USER a private message."""
    finish(ctx, "dm", {"user": user, "text": text, "json": json})


@app.command()
def chat(ctx: typer.Context, user: UserArg, limit: limit_option(50) = "50",
         server: ServerPin = None, json: JsonFlag = False) -> None:
    """Your private messages with USER, oldest first."""
    finish(ctx, "chat", {"user": user, "limit": whole("--limit", limit), "server": server,
                       "json": json})


@app.command()
def notifications(ctx: typer.Context, server: ServerPin = None,
                  json: JsonFlag = False) -> None:
    """New posts from the users you follow since you last asked."""
    finish(ctx, "notifications", {"server": server, "json": json})


@app.command()
def status(ctx: typer.Context,
           wide: Annotated[bool, typer.Option("--wide", help="Every column (default: those that fit 100 columns).")] = False,
           json: JsonFlag = False) -> None:
    """The servers as the broker sees them."""
    finish(ctx, "status", {"wide": wide, "json": json})


@app.command()
def listen(ctx: typer.Context,
           seconds: Annotated[float | None, typer.Option(
               "--seconds", help="Stop after this many seconds (default: until Ctrl-C).")] = None,
           json: Annotated[bool, typer.Option(
               "--json", help="Print one JSON object per line.")] = False) -> None:
    """Live: posts by the users you follow and messages to you, as they happen.

    Each item is shown once: pushed items are marked shown on the servers, so
    `notifications` will not list them again. Messages sent before you started
    listening are in `chat`. Unseen posts from before you started, or from while
    the connection was lost, are marked "(missed while away)".
    """
    finish(ctx, "listen", {"seconds": seconds, "json": json})


@app.command()
def shell(ctx: typer.Context) -> None:
    """Commands line by line, on one connection: a prompt on a terminal, or a script
    on stdin (exit code 1 if any command failed; # starts a comment)."""
    finish(ctx, "shell", {})
