"""Human-readable output of each command's result (``--json`` skips all this).

Every command's function takes the result dict, the user's name and the
request's arguments, and returns text.
Results come from servers written separately, so missing keys render as "?"
rather than crash.
"""
from __future__ import annotations

import time

import msgspec

from common.histogram import Histogram

STATUS_COLUMNS = ("id", "alive", "phase", "events", "digest", "lamport")
JSON_ONLY_COLUMNS = frozenset({"sums"})
"""Status fields too long for the table (each origin's fingerprint): in --json only."""
DIGEST_CHARS = 12
UNIX_TIME_FLOOR = 1e9
"""A float this large in a status row is a Unix time (September 2001 onwards)."""


def clock_time(timestamp: object) -> str:
    """Unix seconds as local HH:MM:SS."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
        return "??:??:??"
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def entry_line(item: dict, author_key: str) -> str:
    """``[L=42 17:42:49] alice: hello, world``"""
    return (f"[L={item.get('lamport', '?')} {clock_time(item.get('timestamp'))}] "
            f"{item.get(author_key, '?')}: {item.get('text', '')}")


def held_by(result: dict) -> str:
    replicas = result.get("replicas")
    return f"held by {plural(replicas, 'server') if isinstance(replicas, int) else '? servers'}"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _until(expires: object) -> str:
    if isinstance(expires, bool) or not isinstance(expires, (int, float)):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(expires))


def register(result: dict, user: str | None, args: dict) -> str:
    return (f"registered {result.get('user', user)}; logged in until "
            f"{_until(result.get('expires'))}")


def login(result: dict, user: str | None, args: dict) -> str:
    return f"logged in as {result.get('user', user)} until {_until(result.get('expires'))}"


def logout(result: dict, user: str | None, args: dict) -> str:
    return f"logged out {result.get('user', user)} on every server"


def post(result: dict, user: str | None, args: dict) -> str:
    item = result.get("post", {})
    return (f"posted as {item.get('author', user)} (id {item.get('id', '?')}, "
            f"L={item.get('lamport', '?')}, {held_by(result)})")


def feed(result: dict, user: str | None, args: dict) -> str:
    posts = result.get("posts", [])
    if not posts:
        return f"feed of {user}: no posts yet"
    lines = [f"feed of {user}: {plural(len(posts), 'post')}, followed users first"]
    for item in posts:
        mark = "  (followed)" if item.get("followed") else ""
        lines.append(entry_line(item, "author") + mark)
    return "\n".join(lines)


def follow(result: dict, user: str | None, args: dict) -> str:
    return f"{user} now follows {args['target']} ({held_by(result)})"


def unfollow(result: dict, user: str | None, args: dict) -> str:
    return f"{user} no longer follows {args['target']} ({held_by(result)})"


def following(result: dict, user: str | None, args: dict) -> str:
    names = result.get("following", [])
    return f"{user} follows " + (", ".join(names) if names else "nobody yet") + _more(result, names)


def users(result: dict, user: str | None, args: dict) -> str:
    names = result.get("users", [])
    total = result.get("total", len(names))
    return f"{plural(total, 'user')}: " + ", ".join(names) + _more(result, names)


def _more(result: dict, names: list) -> str:
    """A list cut to the reply's limit says how many were left out."""
    left = result.get("total", len(names)) - len(names)
    return f" … and {left:,} more" if left > 0 else ""


def dm(result: dict, user: str | None, args: dict) -> str:
    message = result.get("message", {})
    return (f"sent to {args['to']} (id {message.get('id', '?')}, "
            f"L={message.get('lamport', '?')}, {held_by(result)})")


def chat(result: dict, user: str | None, args: dict) -> str:
    messages = result.get("messages", [])
    if not messages:
        return f"no messages between {user} and {args['with']} yet"
    lines = [f"{plural(len(messages), 'message')} between {user} and {args['with']}, "
             f"oldest first"]
    lines += [entry_line(message, "from") for message in messages]
    return "\n".join(lines)


def notifications(result: dict, user: str | None, args: dict) -> str:
    posts = result.get("notifications", [])
    if not posts:
        return "no new posts from the users you follow"
    lines = [f"{plural(len(posts), 'new post')} from the users you follow"]
    lines += [entry_line(item, "author") for item in posts]
    return "\n".join(lines)


NARROW_COLUMNS = {"id": "id", "alive": "alive", "phase": "phase", "events": "events",
                  "digest": "digest", "lamport": "lamport", "clock_offset_ms": "offset_ms",
                  "clock_skew_ms": "skew_ms", "last_sync": "last_sync",
                  "under_replicated": "under_repl", "peers": "peers"}
"""The default table's columns (the row's field: its header), made to fit 100 columns."""
NARROW_DIGEST = 8
STATUS_LEGEND = (
    "offset_ms: how far this server's clock was from the cluster's average when its last "
    "Berkeley round (at last_sync) corrected it; skew_ms: its clock minus this host's now; "
    "under_repl: writes it holds with fewer than 3 copies; peers: how many servers it hears. "
    "--wide: every column.")


def status(result: dict, user: str | None, args: dict) -> str:
    """The servers as a table: ``args["wide"]`` every field, else those that fit 100
    columns, with a legend; what is not per server (coordinator, epoch) below it."""
    servers = result.get("servers", [])
    if args.get("wide"):
        columns = list(STATUS_COLUMNS)
        for server in servers:
            columns += [key for key in server if key not in columns and key not in JSON_ONLY_COLUMNS]
        header = columns
        rows = [[cell(column, server.get(column)) for column in columns] for server in servers]
    else:
        columns = [key for key in NARROW_COLUMNS if any(key in server for server in servers)]
        header = [NARROW_COLUMNS[key] for key in columns]
        rows = [[narrow_cell(column, server.get(column)) for column in columns]
                for server in servers]
    lines = table(header, rows) if servers else ["no servers"]
    # "server" is who answered: None when the broker did, as it should for status
    extras = [f"{key}: {cell(key, value)}" for key, value in result.items()
              if key != "servers" and not (key == "server" and value is None)]
    legend = [] if args.get("wide") or not servers else wrap(STATUS_LEGEND, 100)
    return "\n".join(lines + extras + legend)


def narrow_cell(column: str, value: object) -> str:
    if column == "digest" and isinstance(value, str):
        return value[:NARROW_DIGEST]
    if column == "peers" and isinstance(value, list):
        return str(len(value))
    return cell(column, value)


def wrap(text: str, width: int) -> list[str]:
    import textwrap
    return textwrap.wrap(text, width)


def cell(column: str, value: object) -> str:
    if value is None:
        return "-"
    if column == "digest" and isinstance(value, str):
        return value[:DIGEST_CHARS]
    if column == "repl_lag_hist" and (hist := Histogram.parse(value)) is not None:
        return hist.summary()
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return msgspec.json.encode(value).decode()
    if isinstance(value, float):
        return number(value)
    return str(value)


def number(value: float) -> str:
    """Unix times as HH:MM:SS, other floats to three decimals: ``-0.047``."""
    if value >= UNIX_TIME_FLOOR:
        return clock_time(value)
    return f"{value:.3f}".rstrip("0").rstrip(".")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(text) for text in column) for column in zip(header, *rows)]
    return ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip()
            for line in [header, *rows]]


MISSED = "  (missed while away)"


def push(item: dict, missed: bool = False) -> str:
    """One item from ``listen``: live, or ``missed`` while the listener was away."""
    when = f"[L={item.get('lamport', '?')} {clock_time(item.get('timestamp'))}]"
    mark = MISSED if missed else ""
    if item.get("type") == "message":
        return f"{when} new message from {item.get('from', '?')}: {item.get('text', '')}{mark}"
    return f"{when} {item.get('author', '?')} posted: {item.get('text', '')}{mark}"
