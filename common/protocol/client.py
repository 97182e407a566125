"""What a user asks and is answered: the client operations, their arguments, and the
messages that carry them between a client, the broker and a server.

``OP_ARGS`` says which arguments each operation takes, and ``Request`` refuses any
other set while it is decoded, so no handler checks them again. The sets of
operations (``WRITE_OPS``, ``FAST_OPS``...) say what each one makes and which path
of the broker it takes. ``REQS`` and ``REPS`` carry several requests and replies of
one connection in one message, on the fast path only. The error codes are those a
``Reply`` carries in ``code``.
"""

import operator
from typing import Annotated, Any, ClassVar, Literal, Optional

import msgspec
from msgspec import Meta, Struct

from .limits import (FAST_BATCH, MAX_LISTEN_WAIT, Attempt, Limit, Password, Rid, ServerId,
                     Stamp, Text, Token, UnixTime, UserName, _message, absent)

# --- client operations -------------------------------------------------------
OP_REGISTER = "register"
OP_POST = "post"
OP_FEED = "feed"
OP_FOLLOW = "follow"
OP_UNFOLLOW = "unfollow"
OP_FOLLOWING = "following"
OP_USERS = "users"
OP_DM = "dm"
OP_CHAT = "chat"
OP_NOTIFICATIONS = "notifications"
OP_STATUS = "status"
OP_LISTEN = "listen"
OP_LOGIN = "login"
OP_LOGOUT = "logout"

WRITE_OPS = frozenset({OP_REGISTER, OP_POST, OP_FOLLOW, OP_UNFOLLOW, OP_DM,
                       OP_NOTIFICATIONS, OP_LISTEN, OP_LOGIN, OP_LOGOUT})
"""Operations that create a replicated event (notifications and listen mark items shown)."""
OPEN_OPS = frozenset({OP_REGISTER, OP_LOGIN})
"""The operations a server serves without a session token: every other (but the
broker's ``status``) needs a valid token of the request's ``user``."""
READ_OPS = frozenset({OP_FEED, OP_FOLLOWING, OP_USERS, OP_CHAT})
BROKER_OPS = frozenset({OP_STATUS})
SEEN_OPS = frozenset({OP_LISTEN, OP_NOTIFICATIONS})
"""Operations that mark items seen: the broker sends each user's to one server."""
ALL_OPS = WRITE_OPS | READ_OPS | BROKER_OPS
FAST_OPS = frozenset({OP_POST, OP_DM, OP_FOLLOW, OP_UNFOLLOW, OP_FEED, OP_CHAT,
                      OP_FOLLOWING, OP_USERS})
"""The operations the broker's fast path carries (``zmq.proxy``, in C, to whichever
serving server is next): any server may answer them. The others take the routed
path, where the broker's Python loop chooses: ``status`` (the broker's own),
``register``/``login``/``logout`` (the cluster-wide login throttle sees them),
``listen``/``notifications`` (a user's home server), and any request pinned to a
server (``--server N``). A server refuses any other operation on its fast socket."""
Op = Literal["register", "post", "feed", "follow", "unfollow", "following", "users",
             "dm", "chat", "notifications", "status", "listen", "login", "logout"]

OP_ARGS: dict[str, tuple[str, ...]] = {
    OP_REGISTER: ("password",),
    OP_LOGIN: ("password",),
    OP_LOGOUT: (),
    OP_POST: ("text",),
    OP_FEED: ("limit",),
    OP_FOLLOW: ("target",),
    OP_UNFOLLOW: ("target",),
    OP_FOLLOWING: (),
    OP_USERS: (),
    OP_DM: ("to", "text"),
    OP_CHAT: ("with", "limit"),
    OP_NOTIFICATIONS: (),
    OP_STATUS: (),
    OP_LISTEN: ("wait", "since"),
}
"""The arguments each operation takes, all required, and no others. ``listen`` is
a long poll: the server answers as soon as there are posts by followed users not
yet shown or direct messages (stamped after ``since``) not yet delivered to this
user, marks them shown, or answers empty after ``wait`` seconds. ``login`` carries
the new session's token in the request's ``token`` field, ``logout`` the token to
revoke."""


class Args(Struct, omit_defaults=True, rename={"with_": "with"}, **_message()):
    """The arguments of a request; which ones an operation takes is ``OP_ARGS``."""
    text: Optional[Text] = None
    limit: Optional[Limit] = None
    target: Optional[UserName] = None
    to: Optional[UserName] = None
    with_: Optional[UserName] = None
    wait: Optional[Annotated[float, Meta(ge=0.0, le=MAX_LISTEN_WAIT)]] = None
    since: Optional[Stamp] = None
    password: Optional[Password] = None

    def __repr__(self) -> str:                 # never a password in a traceback or a log
        shown = {name: getattr(self, name) for name in self.__struct_fields__
                 if getattr(self, name) is not None}
        if "password" in shown:
            shown["password"] = "<hidden>"
        return f"Args({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


_ARG_NAMES = {"text": "text", "limit": "limit", "target": "target", "to": "to",
              "with": "with_", "wait": "wait", "since": "since", "password": "password"}
_arg_values = operator.attrgetter(*_ARG_NAMES.values())
_ARGS_ABSENT = {op: tuple(name not in names for name in _ARG_NAMES)
                for op, names in OP_ARGS.items()}
"""For each operation, which arguments (in ``_ARG_NAMES`` order) it must leave out:
one look-up checks a request (``absent``), the costly message only when it fails."""


class Request(Struct, **_message()):
    """A user's request: client -> broker -> one server (or the broker, for status)."""
    TYPE: ClassVar[str] = "REQ"
    rid: Rid
    op: Op
    user: Optional[UserName]
    args: Args
    server: Optional[ServerId]
    time: UnixTime
    token: Optional[Token] = None
    """The user's session token (``login``: the new session's); the server checks it
    and keeps only its sha256."""
    attempt: Attempt = 0
    """The try this is (0 first): a retry's copy of a write wins over earlier tries'
    (``copy_key``), so the reply to the last try names the copy that is kept."""
    stamp: Optional[Stamp] = None
    """A write's Lamport stamp, taken by the client when it issued the write and the
    same on every retry (None: the server that takes the write stamps it). A client
    with many writes in flight sets it, so that its user's writes keep the order they
    were issued in on every server, whichever servers take them (``order_key``).
    A server refuses a stamp ahead of its own clock, which has merged the request's."""

    def __repr__(self) -> str:                 # never a token in a traceback or a log
        return (f"Request(rid={self.rid!r}, op={self.op!r}, user={self.user!r}, "
                f"args={self.args!r}, server={self.server!r}, "
                f"token={'<hidden>' if self.token else None}, attempt={self.attempt}, "
                f"stamp={self.stamp})")

    def __post_init__(self) -> None:
        if absent(_arg_values(self.args)) != _ARGS_ABSENT[self.op]:
            given = {name for name, attr in _ARG_NAMES.items()
                     if getattr(self.args, attr) is not None}
            wanted = set(OP_ARGS[self.op])
            missing, extra = sorted(wanted - given), sorted(given - wanted)
            raise ValueError(f"{self.op} takes {', '.join(OP_ARGS[self.op]) or 'no arguments'}"
                             + (f"; missing {', '.join(missing)}" if missing else "")
                             + (f"; unexpected {', '.join(extra)}" if extra else ""))
        if self.args.text is not None and not self.args.text.strip():
            raise ValueError("text must not be blank")
        if self.op in BROKER_OPS:
            return
        if self.user is None:
            raise ValueError(f"{self.op} needs a user")
        if self.op == OP_LOGIN and self.token is None:
            raise ValueError("login needs a token (the new session's)")
        other = self.args.target or self.args.to
        if other == self.user and self.op in (OP_FOLLOW, OP_UNFOLLOW):
            raise ValueError("you cannot follow yourself")
        if other == self.user and self.op == OP_DM:
            raise ValueError("you cannot message yourself")


class Reply(Struct, omit_defaults=True, **_message()):
    """The answer to a request: server (or broker) -> broker -> user."""
    TYPE: ClassVar[str] = "REP"
    rid: Annotated[str, Meta(max_length=64)]
    ok: bool
    server: Optional[ServerId]
    time: UnixTime
    result: Optional[dict[str, Any]] = None
    code: Optional[str] = None
    error: Optional[str] = None


class Requests(Struct, **_message()):
    """Several requests of one user's connection in one message, on the fast path
    only (``clients/pipeline.py`` packs the first tries it has ready). Each body is
    decoded and validated on its own (``decode_request``), so one bad request is
    refused alone and the others are served, in order."""
    TYPE: ClassVar[str] = "REQS"
    reqs: Annotated[list[msgspec.Raw], Meta(min_length=1, max_length=FAST_BATCH)]


class Replies(Struct, **_message()):
    """The replies one server's loop turn has for one fast-path connection, in one
    message (two or more; one goes as a ``REP``)."""
    TYPE: ClassVar[str] = "REPS"
    reps: Annotated[list[Reply], Meta(min_length=1, max_length=FAST_BATCH)]


# --- error codes in replies -----------------------------------------------------
ERR_BAD_REQUEST = "bad_request"      # malformed or invalid: do not retry
ERR_UNKNOWN_USER = "unknown_user"    # names a user who never used the system
ERR_UNAVAILABLE = "unavailable"      # no server can take it now: retry
ERR_NO_SUCH_SERVER = "no_such_server"  # --server names a server not serving
ERR_INTERNAL = "internal"
ERR_UNAUTHORIZED = "unauthorized"    # no session token, or not a valid one of this user
ERR_NAME_TAKEN = "name_taken"        # register: the name has an owner already
ERR_NO_ACCOUNT = "no_account"        # login: nobody registered this name (register first)
ERR_THROTTLED = "throttled"          # login: too many failures; the error says how long
RETRYABLE_ERRORS = frozenset({ERR_UNAVAILABLE})
