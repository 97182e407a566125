"""One log file per process, one line per interaction, made for ``tail -f``.

Every line reads::

    2026-11-26 17:42:49.123456 | L=42 | server-1 | recv alice | post rid=3f2a… text='hello'

that is: the process's synchronized physical time, its Lamport clock *after*
the interaction (a send shows the stamp carried by the message, a receive the
clock after merging it), the process, the direction and the peer involved, and
what happened. ``run_all.py timeline`` merges every file by ``L=`` exactly.

Lines are formatted at once but handed to loguru together, at most
``flush_every`` seconds later (``Config.log_flush_every``) (``flush_if_due()`` every loop turn): one loguru
call costs ~35 µs, and a busy server writes a dozen lines per client write, so
per-line calls would cost more than the write itself.

A short-lived process (one CLI command writes a handful of lines) passes
``plain=True``: the same lines, appended to the file directly, without importing
loguru (~20 ms of a command's start-up).
"""
from __future__ import annotations

import os
import re
import sys
import time
from datetime import datetime, timezone

from common.clock import LamportClock, PhysicalClock
from common.log_lines import CHAOS_JUMP
from common.ownership import claim, release
from common.paths import joined

LINE_RE = re.compile(r"^(?P<time>\S+ \S+) \| L=(?P<lamport>\d+) \| (?P<process>\S+) \| (?P<rest>.*)$")


_second = (-1, "")


def _format_time(t: float) -> str:
    """UTC, microseconds; the date-and-second prefix is cached (it dominated the cost)."""
    global _second
    whole = int(t)
    if whole != _second[0]:
        _second = (whole, datetime.fromtimestamp(whole, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S"))
    return f"{_second[1]}.{int((t - whole) * 1e6):06d}"


class ProcessLog:
    """The log of one process; every call writes exactly one line.

    ``exclusive`` (the broker, servers): the file is locked first (``ownership.claim``),
    and a process finding it locked by another gets ``ownership.InUse`` before it
    opens, let alone writes, the file."""

    def __init__(self, process: str, path: os.PathLike | str, lamport: LamportClock,
                 clock: PhysicalClock, echo: bool = False, flush_every: float = 0.05,
                 exclusive: bool = False, plain: bool = False) -> None:
        self.process = process
        self.flush_every = flush_every
        self.lamport = lamport
        self.clock = clock
        path = joined(path)                      # str(Path(path)), without pathlib
        self._lock = claim(path, need="every process needs its log file writable") \
            if exclusive else None
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._sink = _PlainSink(path) if plain else _LoguruSink(path, echo)
        self._pending: list[str] = []
        self._moment: str | None = None          # the time of every line, inside ``moment()``
        self._flush_at = 0.0
        clock.on_jump = self._clock_jumped       # every process's chaos jumps, in its log

    def _clock_jumped(self, jump: float) -> None:
        self.note(CHAOS_JUMP.format(jump_ms=f"{jump * 1000:+.1f}"))

    def line(self, direction: str, peer: str, what: str, level: str = "INFO") -> None:
        """Write ``direction peer | what`` stamped with both clocks."""
        if level != "INFO":
            what = f"{level}: {what}"
        text = self._head(direction, peer) + what
        if level == "INFO":
            self._pending.append(text)
        else:
            self.flush()
            self._sink.write(text, level)

    def _head(self, direction: str, peer: str) -> str:
        """A line up to its ``what``: both clocks (the moment's time, inside one)."""
        return (f"{self._moment or _format_time(self.clock.stamp())} | "
                f"L={self.lamport.value} | {self.process} | {direction} {peer} | ")

    def moment(self) -> "_Moment":
        """``with log.moment():`` the lines written inside share one time: the parts of
        one interaction (the requests of one ``REQS``, the replies of one loop turn,
        sent together), read from the clock once."""
        return _Moment(self)

    def batch(self, direction: str, peer: str, whats: list[str]) -> None:
        """One INFO line per item of ``whats``, for the parts of one interaction (the
        events of one EVENT message): the same lines as ``line`` for each, stamped
        once, since they happened at one moment of both clocks."""
        if whats:
            head = self._head(direction, peer)
            self._pending.extend([head + what for what in whats])

    def flush(self) -> None:
        """Hand the lines gathered so far to loguru."""
        if self._pending:
            self._sink.write("\n".join(self._pending), "INFO")
            self._pending.clear()
        self._flush_at = time.monotonic() + self.flush_every

    def flush_if_due(self) -> float | None:
        """Flush when ``flush_every`` has passed since the last flush (call every loop
        turn); returns when to call again, or None if nothing is pending."""
        if not self._pending:
            return None
        if time.monotonic() >= self._flush_at or len(self._pending) >= 256:
            self.flush()
            return None
        return self._flush_at

    def send(self, peer: str, what: str) -> None:
        self.line("send", peer, what)

    def recv(self, peer: str, what: str) -> None:
        self.line("recv", peer, what)

    def note(self, what: str, level: str = "INFO") -> None:
        """A local interaction (election result, clock adjustment, phase change):
        rare and often what someone tailing the log waits for, so written at once."""
        self.line("local", "-", what, level)
        self.flush()

    def warn(self, what: str) -> None:
        self.line("local", "-", what, "WARNING")

    def guard(self, fn, *args) -> None:
        """Run a handler or periodic job; an exception is logged with the message
        that caused it, and the process goes on (no input may stop it)."""
        try:
            fn(*args)
        except Exception as exc:    # noqa: BLE001 - the one guard of every handler and job
            self.warn(f"error in {getattr(fn, '__name__', fn)}: {type(exc).__name__}: {exc} "
                      f"(while handling {_describe_cause(args)})")

    def close(self) -> None:
        self.flush()
        self._sink.close()
        release(self._lock)
        self._lock = None


class _Moment:
    __slots__ = ("log", "outer")

    def __init__(self, log: ProcessLog) -> None:
        self.log = log

    def __enter__(self) -> None:
        self.outer = self.log._moment
        if self.outer is None:
            self.log._moment = _format_time(self.log.clock.stamp())

    def __exit__(self, *exc_info) -> None:
        self.log._moment = self.outer


class _LoguruSink:
    """The log file through loguru (long-lived processes); ``echo``: warnings on stderr too."""

    def __init__(self, path: str, echo: bool) -> None:
        from loguru import logger
        self.logger = logger
        logger.remove()
        logger.add(str(path), format="{message}", level="DEBUG", enqueue=False, colorize=False)
        if echo:
            logger.add(sys.stderr, format="{message}", level="WARNING", colorize=False)

    def write(self, text: str, level: str) -> None:
        self.logger.log(level, text)

    def close(self) -> None:
        self.logger.remove()


class _PlainSink:
    """The log file appended to directly, each write at once: the same lines as loguru's."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a", encoding="utf-8")

    def write(self, text: str, level: str) -> None:
        self.file.write(text + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _describe_cause(args: tuple) -> str:
    """What a handler was given, for the guard's line: frames, or a message."""
    if not args:
        return "a periodic job"
    first = args[0]
    if isinstance(first, list) and first and isinstance(first[0], bytes):
        return " ".join(_frame(f) for f in first)
    return repr(first)[:200]


def _frame(frame: bytes) -> str:
    """A frame's start for a log line; a body that holds a password or a token is
    left out (it would put the secret in the log)."""
    if b'"password"' in frame or b'"token"' in frame:
        return f"<a body of {len(frame)} bytes with a password or token, not shown>"
    return repr(frame[:80])


def client_peer(route: bytes) -> str:
    """A user's connection as a log peer: its ROUTER identity in hex (5 bytes that
    differ in the last ones, so never cut from the end)."""
    return f"client:{route.hex()[-16:]}"


class ReplyNames:
    """Whose request each rid is (and what it asked), so that the line of its reply
    names the user (``server-2->alice``), not the connection (``client:00e43c9869``).
    Bounded: a request whose reply never came is forgotten after ``limit`` others.
    The broker's routed path and its fast path's log (``broker/fast_path.py``) keep one each."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._asked: dict[str, tuple[str, str]] = {}

    def __len__(self) -> int:
        return len(self._asked)

    def asked(self, rid: str, user: str, what: str = "") -> None:
        if len(self._asked) >= self.limit:
            self._asked.clear()
        self._asked[rid] = (user, what)

    def take(self, rid: str) -> tuple[str, str] | None:
        """(user, what) of ``rid``, forgotten now; None if unknown."""
        return self._asked.pop(rid, None)

    def peer(self, rid: str, route: bytes) -> str:
        """The user who asked ``rid`` (forgotten now), else the connection."""
        asked = self.take(rid)
        return asked[0] if asked else client_peer(route)


def _value(v) -> str:
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, dict):
        return vv_brief(v)
    if isinstance(v, float):
        return f"{v:.6f}".rstrip("0").rstrip(".")
    return str(v)


_SECRET_FIELDS = frozenset({"password", "token", "hash"})
"""The fields ``secret`` hides or cuts."""
SECRET_PREFIX = 8
"""Characters of a token's hash (or a password's hash) a log line may show: enough
to tell two sessions apart, never enough to use one."""


def secret(name: str, value):
    """A field as a log line may show it: a password never, a token never (its
    field in a request is the token itself), a hash by its first characters."""
    if name == "password":
        return "<hidden>"
    if name in ("token", "hash") and isinstance(value, str):
        return value[:SECRET_PREFIX] + "…"
    return value


def brief(body, width: int = 120) -> str:
    """``key=value`` pairs of a message (a Struct) or a dict, cut to ``width``
    characters; the sender and fields left at their default are left out.
    Passwords and tokens never show (``secret``)."""
    if not isinstance(body, dict):
        body = {f: getattr(body, f) for f in body.__struct_fields__
                if f not in ("sender",) and getattr(body, f) is not None}
    text = " ".join(f"{k}={ms_brief(v) if k in MS_FIELDS else _value(secret(k, v))}"
                    for k, v in body.items() if k != "from")
    return text if len(text) <= width else text[:width - 1] + "…"


def ms_brief(seconds: dict) -> str:
    """A map of durations in seconds (Berkeley's corrections) in ms, as every log line
    gives times: ``{1:+0.011ms,2:-0.227ms}``."""
    return "{" + ",".join(f"{k}:{v * 1000:+.3f}ms" for k, v in sorted(seconds.items())) + "}"


MS_FIELDS = frozenset({"corrections"})
"""Message fields in seconds that log lines show in ms."""


def vv_brief(vv: dict) -> str:
    """A version vector (or any int-keyed map) as ``{1:3,2:5}``, the same sent and received."""
    return "{" + ",".join(f"{k}:{_value(v)}" for k, v in sorted(vv.items())) + "}"


def args_brief(args) -> str:
    """A request's arguments, texts cut to 40 characters: ``text='hello, wor…' limit=20``."""
    parts = []
    for name in args.__struct_fields__:
        value = getattr(args, name)
        if value is None:
            continue
        if name == "password":
            parts.append("password=<hidden>")
            continue
        if isinstance(value, str) and len(value) > 40:
            value = value[:40] + "…"
        parts.append(f"{name.rstrip('_')}={value!r}")
    return " ".join(parts)


def event_brief(event) -> str:
    """An event as one log fragment: kind, id, origin:seq, author, stamp, data."""
    text = event.data.text
    if event.kind == "post" and text is not None:   # most lines: a post carries its text alone
        data = f"text={text!r}"
        if len(data) > 80:
            data = data[:79] + "…"
    else:
        data = data_brief(event.data, 80)
    return (f"{event.kind} id={event.id} {event.origin}:{event.seq} "
            f"by {event.user} L={event.lamport} {data}").rstrip()


def data_brief(data, width: int = 80) -> str:
    """``brief(data, width)`` of an event's data, written for the one line per event
    a server logs: the same text, without building a dict first."""
    parts = []
    for name in data.__struct_fields__:
        value = getattr(data, name)
        if value is None:
            continue
        if type(value) is str and name not in _SECRET_FIELDS:
            parts.append(f"{name}={value!r}")
        else:
            parts.append(f"{name}={ms_brief(value) if name in MS_FIELDS else _value(secret(name, value))}")
    text = " ".join(parts)
    return text if len(text) <= width else text[:width - 1] + "…"


def parse_line(line: str) -> dict | None:
    """Split a log line into time, lamport, process and the rest; None if foreign."""
    m = LINE_RE.match(line.rstrip("\n"))
    if not m:
        return None
    d = m.groupdict()
    d["lamport"] = int(d["lamport"])
    return d
