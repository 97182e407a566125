"""The wire protocol: every message type, field, range, frame layout and operation.

Nothing else in the code base spells a message type or a frame layout.

Messages
--------
One frozen ``msgspec.Struct`` per message type; its fields carry their types and
ranges (``Meta``), so decoding validates in C and a handler receives a typed
message or never runs. ``TYPE`` is the wire name of each.

Frames
------
Every message is three frames, ``[type, lamport, body]``:

* ``type``    the ASCII message type; on the bus it doubles as the topic.
* ``lamport`` the sender's Lamport clock after its send tick, ASCII decimal.
* ``body``    one JSON object, the message's fields (``"from"`` for ``sender``).

Routing envelopes come in front where a ROUTER socket needs them (``Route``):

* client DEALER -> broker frontend ROUTER: ``[type, lamport, body]``;
  the broker sees ``[client, type, lamport, body]`` and answers the same way.
* broker backend ROUTER <-> server DEALER: ``[route, type, lamport, body]``, where
  ``route`` is the client's identity, or empty for READY / HB / LEAVE; the broker
  sees the server's identity in front of that.
* bus (PUB -> broker XSUB/XPUB -> SUB): ``[type, lamport, body]``.
* server DEALER -> peer ROUTER: ``[type, lamport, body]``; the ROUTER sees the
  DEALER's identity in front and answers with it.

Each socket accepts only its own message types (``Route.accepts``): anything else,
and anything malformed or out of range, raises ``ProtocolError`` with a reason.
``Endpoint`` ticks the Lamport clock on every send and merges on every receive,
so no handler does either by hand.
"""

import itertools
import operator
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

import msgspec
import zmq
from msgspec import Meta, Struct

# --- limits -------------------------------------------------------------------
MAX_STAMP = 2 ** 53
"""Lamport stamps, epochs and sequence numbers stay below this: far under any
overflow (JSON numbers, 64-bit ints), so no merge or increment ever breaks."""
MAX_CLIENT_LEAD = 10 ** 6
"""How far a user's Lamport stamp may lie ahead of the broker's clock. A user's
clock only grows by merging replies and by its own ticks, so an honest one is at
most a few ticks ahead; a request far ahead is refused, so no user can push the
cluster's clocks toward the ceiling."""
MAX_TEXT = 500
MAX_LIMIT = 1000
DEFAULT_LIMIT = 20
MAX_LISTEN_WAIT = 30.0
MAX_SERVER_ID = 99
MAX_IDS = MAX_LIMIT
"""Ids a SEEN event may list (posts shown, messages delivered): one reply's worth."""
FETCH_LIMIT = 50_000
"""The most events one EVENTS reply may carry."""
MAX_NAMES = 20_000
"""User names one ``users`` or ``following`` reply lists at most (with ``total``)."""
MAX_REQUEST_BYTES = 64 * 1024
"""A client's request frame larger than this is refused by the broker."""
MAX_REPLY_BYTES = MAX_LIMIT * (4 * MAX_TEXT + 512) + 64 * 1024
"""The largest reply a valid request can get: a page of ``MAX_LIMIT`` posts or
messages of ``MAX_TEXT`` 4-byte characters with their fields (``MAX_NAMES``
names of 32 characters take less). Replies never need
more, so the broker's limit on its backend socket is this, and a valid request
never times out for its size."""
FAST_BATCH = 64
"""Requests one ``REQS`` carries at most, and replies one ``REPS`` (the fast path)."""
FAST_BATCH_BYTES = MAX_REQUEST_BYTES - 1024
"""The bodies one ``REQS`` packs at most (``MAX_REQUEST_BYTES`` is the frame's bound,
and the brackets and commas around them take a few bytes more); a ``REPS`` packs the
same, and a reply bigger than that goes alone, as a ``REP``."""
MAX_PEER_REQUEST_BYTES = 1024 * 1024
"""A FETCH or ACK is a few hundred bytes; a peer port refuses messages above this."""
MAX_BUS_BYTES = 64 * 1024 * 1024
"""The broker's bus refuses messages above this (one origin's EVENT of a loop turn
is at most ``Config.drain`` events, well below it)."""
MAX_PASSWORD = 1024
"""Characters a password may have: argon2 takes any length, but a bound keeps the
request small and the work of hashing it known."""
MIN_PASSWORD = 8
"""Characters a new password needs at least (``register``)."""
USER_PATTERN = r"^[a-z0-9_]{1,32}$"
USER_RE = re.compile(USER_PATTERN)
RID_PATTERN = r"^[0-9A-Za-z_-]{1,64}$"
RID_RE = re.compile(RID_PATTERN)
TEXT_PATTERN = "^[^\\x00-\\x1f\\x7f-\\x9f\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069]+$"
"""Printable text: no control characters, no bidirectional overrides (which let a
message display other than it reads); ``Request`` and ``Event`` also refuse blank text."""

HOST_PATTERN = (r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
                r"|\[[0-9A-Fa-f:.]{2,45}\])")
"""A host name, an IPv4 address, or an IPv6 address in brackets."""
PORT_PATTERN = (r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}"
                r"|655[0-2][0-9]|6553[0-5])")
"""A TCP port, 1 to 65535."""
MAX_ENDPOINT = 270
"""Characters of an announced endpoint: ``tcp://``, a 253-character name, ``:65535``."""

# --- field types, with their ranges ------------------------------------------
ServerId = Annotated[int, Meta(ge=1, le=MAX_SERVER_ID)]
Stamp = Annotated[int, Meta(ge=0, lt=MAX_STAMP)]
Seq = Annotated[int, Meta(ge=1, lt=MAX_STAMP)]
Count = Annotated[int, Meta(ge=0, lt=MAX_STAMP)]
Epoch = Annotated[int, Meta(ge=0, lt=MAX_STAMP)]
UserName = Annotated[str, Meta(pattern=USER_PATTERN)]
Rid = Annotated[str, Meta(pattern=RID_PATTERN)]
Text = Annotated[str, Meta(min_length=1, max_length=MAX_TEXT, pattern=TEXT_PATTERN)]
UnixTime = Annotated[float, Meta(ge=0.0, le=1e11)]
"""Seconds since 1970 (a physical clock reading), finite."""
Seconds = Annotated[float, Meta(ge=-1e6, le=1e6)]
"""A clock correction in seconds."""
Limit = Annotated[int, Meta(ge=1, le=MAX_LIMIT)]
VersionVector = Annotated[dict[ServerId, Count], Meta(max_length=MAX_SERVER_ID)]
"""``{origin server id: highest contiguous seq held}``; on the wire the keys are strings."""
PeerEndpoint = Annotated[str, Meta(max_length=MAX_ENDPOINT,
                                   pattern=rf"^tcp://(?!0\.0\.0\.0:|\[::\]:)"
                                           rf"{HOST_PATTERN}:{PORT_PATTERN}$")]
"""Where a server's peers dial it, ``tcp://10.0.0.12:5656``: announced in its READY and
BEAT (``--advertise``), shown in ``status``. Never a wildcard (``0.0.0.0``, ``*``)."""
Phase = Literal["joining", "syncing", "serving", "leaving", "halted"]
Durability = Literal["fsync", "flush"]
IdList = Annotated[list[Rid], Meta(max_length=MAX_IDS)]
ServerIds = Annotated[list[ServerId], Meta(max_length=MAX_SERVER_ID)]
Attempt = Annotated[int, Meta(ge=0, le=10_000)]
"""How many times a client sent a request before this one (0: the first try)."""
Digest = Annotated[str, Meta(pattern=r"^[0-9a-f]{0,64}$")]
Password = Annotated[str, Meta(min_length=1, max_length=MAX_PASSWORD)]
Token = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{43,128}$")]
"""A session token as the client sends it: ``secrets.token_urlsafe(32)`` (256 bits)
or longer; the servers keep only its sha256 (``TokenHash``)."""
TokenHash = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
PasswordHash = Annotated[str, Meta(max_length=256, pattern=(
    r"^\$argon2id\$v=19\$m=[0-9]{1,7},t=[0-9]{1,3},p=[0-9]{1,2}"
    r"\$[A-Za-z0-9+/]{11,64}\$[A-Za-z0-9+/]{16,128}$"))]
"""An argon2id hash in its PHC string form (parameters, salt, hash)."""
Fingerprint = Annotated[int, Meta(ge=0, le=2 ** 63 - 1)]
"""The XOR of one 63-bit hash per event of a set (``servers/state.py``): order-free,
updated in O(1) per event, equal for two sets of one origin's seqs 1..n exactly
when their events are."""
Fingerprints = Annotated[dict[ServerId, Fingerprint], Meta(max_length=MAX_SERVER_ID)]
"""``{origin: fingerprint of the events of that origin I hold}``, sent beside every
version vector: equal vectors with different fingerprints are a divergence, and an
origin counts a peer's copy of its events only when the fingerprints match."""
MAX_SUMS = 4096
"""Block fingerprints in one SUMS answer."""
RANGE_MAX = 1000
"""Events in one COPIES answer: a repair compares blocks of this many seqs at most."""


class ProtocolError(ValueError):
    """A frame or body that does not follow this protocol."""


def _message(**options):
    """Struct options of every message: frozen, unknown fields refused."""
    return dict(frozen=True, forbid_unknown_fields=True, **options)


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


def absent(values: tuple) -> tuple[bool, ...]:
    """Which of ``values`` are None, in order (C-level: the check of every request and
    event runs it)."""
    return tuple(map(operator.is_, values, itertools.repeat(None, len(values))))


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


# --- server <-> broker control (backend, empty route) ----------------------------
class ServerStatus(Struct, **_message()):
    """One server's row in ``status``, sent in its heartbeat to the broker."""
    id: ServerId
    phase: Phase
    events: Count
    digest: Digest
    lamport: Stamp
    vv: VersionVector
    coordinator: Optional[ServerId]
    epoch: Epoch
    clock_offset_ms: Optional[float]
    clock_skew_ms: float
    last_sync: Optional[UnixTime]
    under_replicated: Count
    repl_lag_hist: Annotated[list[Count], Meta(max_length=64)]
    peers: ServerIds
    waiting: Optional[Annotated[str, Meta(max_length=200)]] = None
    """Why a server that is not serving cannot go on (no peer holds what it must sync)."""
    repairs: Count = 0
    """Events this server replaced by the copy the others agree on (anti-entropy)."""
    sums: Fingerprints = {}
    """The fingerprint of each origin's events held (``Fingerprints``)."""
    durability: Optional[Durability] = None
    """What a copy held by this server means: ``fsync`` (on disk: survives a power loss)
    or ``flush`` (in the OS page cache: survives a kill of the process, not a power
    loss); None from a process that stores nothing (the benchmark's echo server)."""
    address: Optional[PeerEndpoint] = None
    """The peer endpoint this server announces (``--advertise``); None from the echo server."""
    members: ServerIds = []
    """The membership as this server sees it (``servers/quorum.py``)."""
    reachable: Count = 0
    """How many of the members it hears, itself included: below a majority it
    acknowledges no write."""
    batched: Annotated[list[Count], Meta(max_length=3)] = []
    """``[turns, events, largest]``: loop turns that made events of this server's own,
    the events they made, the most in one turn (each turn's are one EVENT, one flush)."""


class Ready(Struct, **_message()):
    """Server -> broker: I am caught up and my clock is set: put me in the pool."""
    TYPE: ClassVar[str] = "READY"
    id: ServerId
    address: Optional[PeerEndpoint] = None
    """Where my peers dial me (``PeerEndpoint``); None from the benchmark's echo server."""


class Heartbeat(Struct, omit_defaults=True, **_message()):
    """Both ways on the backend: I am alive. A server's carries its status row and
    its clock (the broker follows the coordinator's); the broker's carries only its
    ``stamp``, which the server echoes to give the broker the round trip."""
    TYPE: ClassVar[str] = "HB"
    id: Optional[ServerId] = None
    clock: Optional[UnixTime] = None
    status: Optional[ServerStatus] = None
    stamp: Optional[Annotated[float, Meta(ge=0.0, le=1e11)]] = None
    """The broker's: its monotonic clock as it sent this HB (seconds)."""
    echo: Optional[Annotated[float, Meta(ge=0.0, le=1e11)]] = None
    """A server's: the ``stamp`` of the last HB it got from the broker..."""
    held: Optional[Annotated[float, Meta(ge=0.0, le=1e6)]] = None
    """...and the seconds it held it before sending this one: the broker's round trip
    is its receive time - ``echo`` - ``held`` (``broker/clock_follow.py``)."""
    pooled: Optional[bool] = None
    """The broker's, to a server: whether it is in the pool. Only READY puts a server
    there; one that serves but is not pooled (the broker dropped it, or restarted)
    sends READY again."""


class Leave(Struct, **_message()):
    """Server -> broker: I am going (SIGTERM): stop routing to me now."""
    TYPE: ClassVar[str] = "LEAVE"
    id: ServerId


# --- events: the replicated writes ------------------------------------------------
EV_REGISTER = "register"
EV_POST = "post"
EV_FOLLOW = "follow"
EV_UNFOLLOW = "unfollow"
EV_DM = "dm"
EV_SEEN = "seen"
EV_ACCOUNT = "account"
EV_SESSION = "session"
EV_LOGOUT = "logout"
EVENT_KINDS = frozenset({EV_REGISTER, EV_POST, EV_FOLLOW, EV_UNFOLLOW, EV_DM, EV_SEEN,
                         EV_ACCOUNT, EV_SESSION, EV_LOGOUT})
EVENT_DATA: dict[str, tuple[str, ...]] = {
    EV_REGISTER: (), EV_POST: ("text",), EV_FOLLOW: ("target",), EV_UNFOLLOW: ("target",),
    EV_DM: ("to", "text"), EV_SEEN: ("shown", "delivered"), EV_ACCOUNT: ("hash",),
    EV_SESSION: ("token", "expires", "account"), EV_LOGOUT: ("token",)}
"""The data each kind of event carries. SEEN: posts shown to the user
(notifications, listen) and messages pushed to them (listen). ACCOUNT (``register``):
the argon2id hash of the password, never the password. SESSION (``login``): the
sha256 of the token, its expiry and the id of the ACCOUNT event the password was
checked against. LOGOUT: the sha256 of the token revoked. REGISTER events (no
data) are the registrations of before accounts: they name a user, claim nothing."""
EventKind = Literal["register", "post", "follow", "unfollow", "dm", "seen", "account",
                    "session", "logout"]


class EventData(Struct, omit_defaults=True, **_message()):
    """What an event carries besides its header; which fields a kind has is ``EVENT_DATA``."""
    text: Optional[Text] = None
    target: Optional[UserName] = None
    to: Optional[UserName] = None
    shown: Optional[IdList] = None
    delivered: Optional[IdList] = None
    hash: Optional[PasswordHash] = None
    token: Optional[TokenHash] = None
    expires: Optional[UnixTime] = None
    account: Optional[Rid] = None


_DATA_FIELDS = ("text", "target", "to", "shown", "delivered", "hash", "token", "expires",
                "account")
_data_values = operator.attrgetter(*_DATA_FIELDS)
_DATA_ABSENT = {kind: tuple(name not in names for name in _DATA_FIELDS)
                for kind, names in EVENT_DATA.items()}


class Event(Struct, omit_defaults=True, **_message()):
    """One write, the unit of replication: ``(origin, seq)`` names it everywhere."""
    id: Rid
    kind: EventKind
    user: UserName
    lamport: Stamp
    ts: UnixTime
    origin: ServerId
    seq: Seq
    data: EventData
    attempt: Attempt = 0
    """The client's try that made it (``Request.attempt``); left out when 0, so events
    of the first try encode (and hash) as they always did."""

    def __post_init__(self) -> None:
        data = self.data
        if absent(_data_values(data)) != _DATA_ABSENT[self.kind]:
            raise ValueError(f"a {self.kind} event carries {', '.join(EVENT_DATA[self.kind]) or 'no data'}")
        if data.text is not None and not data.text.strip():
            raise ValueError("an event's text must not be blank")
        other = data.target or data.to
        if other == self.user:
            raise ValueError(f"a {self.kind} event names its own author")


EVENT_FIELDS = tuple(f.encode_name for f in msgspec.structs.fields(Event))


def order_key(event: Event) -> tuple[int, str]:
    """The one total order of events on every server: Lamport stamp, then id."""
    return (event.lamport, event.id)


def copy_key(event: Event) -> tuple[int, int, str, int, int]:
    """Between two events made of one request (a retry that reached two servers),
    the one with the smaller copy key counts, on every server: the latest try's.

    A client hears only the reply to its last try (it drops a timed-out socket, and
    an error reply ends a try), and the server answering it made or holds that try's
    copy. Were the earliest copy to win, a first try stranded on a server cut off from
    the rest could surface after a later try was acknowledged, and the reply would name
    a copy that loses (issue 13)."""
    return (-event.attempt, event.lamport, event.id, event.origin, event.seq)


# --- bus (every server publishes, every server subscribes) -----------------------
_BUS = _message(rename={"sender": "from"})


class EventBatch(Struct, **_BUS):
    """The new writes an origin made in one loop turn, in seq order, and its vector
    once they are durable: the ACK of the turn rides along."""
    TYPE: ClassVar[str] = "EVENT"
    sender: ServerId
    events: Annotated[list[Event], Meta(min_length=1, max_length=FETCH_LIMIT)]
    vv: VersionVector
    sums: Fingerprints = {}


class Beat(Struct, **_BUS):
    """A server's heartbeat on the bus: phase, holdings, the coordinator it follows."""
    TYPE: ClassVar[str] = "BEAT"
    sender: ServerId
    phase: Phase
    vv: VersionVector
    epoch: Epoch
    coordinator: Optional[ServerId]
    events: Count = 0
    digest: Digest = ""
    sums: Fingerprints = {}
    address: Optional[PeerEndpoint] = None
    """Where my peers dial me (``PeerEndpoint``): each peer's link to me follows it."""
    members: ServerIds = []
    """The membership as I see it (``servers/quorum.py``)."""
    hears: ServerIds = []
    """The members I heard within ``peer_timeout``, me included: a silent member is
    removed only when a majority of the members do not hear it."""


class Bye(Struct, **_BUS):
    """I am leaving (SIGTERM): count me gone now."""
    TYPE: ClassVar[str] = "BYE"
    sender: ServerId


class Election(Struct, **_BUS):
    """Bully: I call an election; only higher ids react."""
    TYPE: ClassVar[str] = "ELECTION"
    sender: ServerId
    epoch: Epoch


class Answer(Struct, **_BUS):
    """Bully: a higher id is alive and takes over."""
    TYPE: ClassVar[str] = "ANSWER"
    sender: ServerId
    to: ServerId
    epoch: Epoch


class Coordinator(Struct, **_BUS):
    """Bully: I am the coordinator for this epoch (``term * 100 + id``)."""
    TYPE: ClassVar[str] = "COORDINATOR"
    sender: ServerId
    epoch: Epoch


class TimeQuery(Struct, **_BUS):
    """Berkeley: the coordinator asks every server its time."""
    TYPE: ClassVar[str] = "TIME_QUERY"
    sender: ServerId
    epoch: Epoch
    round: Count
    probe: Annotated[int, Meta(ge=0, le=100)]


class TimeReply(Struct, **_BUS):
    """Berkeley: a server's clock reading, for the coordinator's round."""
    TYPE: ClassVar[str] = "TIME_REPLY"
    sender: ServerId
    to: ServerId
    round: Count
    probe: Annotated[int, Meta(ge=0, le=100)]
    time: UnixTime


class TimeAdjust(Struct, **_BUS):
    """Berkeley: each server's own correction, in seconds to add to its clock."""
    TYPE: ClassVar[str] = "TIME_ADJUST"
    sender: ServerId
    epoch: Epoch
    round: Count
    corrections: Annotated[dict[ServerId, Seconds], Meta(max_length=MAX_SERVER_ID)]


# --- server <-> server request/reply (peer ROUTER) --------------------------------
class Fetch(Struct, **_BUS):
    """Give me the events beyond this version vector, at most ``limit`` of them."""
    TYPE: ClassVar[str] = "FETCH"
    sender: ServerId
    after: VersionVector
    limit: Annotated[int, Meta(ge=1, le=FETCH_LIMIT)]


class Events(Struct, **_BUS):
    """A chunk of events answering FETCH; ``more`` while some remain."""
    TYPE: ClassVar[str] = "EVENTS"
    sender: ServerId
    events: Annotated[list[Event], Meta(max_length=FETCH_LIMIT)]
    vv: VersionVector
    more: bool
    sums: Fingerprints = {}


class Ack(Struct, **_BUS):
    """To an origin: my version vector, the events I now hold durably."""
    TYPE: ClassVar[str] = "ACK"
    sender: ServerId
    vv: VersionVector
    sums: Fingerprints = {}


# --- repair (anti-entropy) between two servers' peer ports -------------------------
class Compare(Struct, **_BUS):
    """Give me the fingerprints of your events of ``origin`` with seq in ``(lo, hi]``,
    one per block of ``block`` seqs (the last one maybe shorter)."""
    TYPE: ClassVar[str] = "COMPARE"
    sender: ServerId
    origin: ServerId
    lo: Count
    hi: Seq
    block: Seq

    def __post_init__(self) -> None:
        if self.lo >= self.hi:
            raise ValueError("COMPARE needs lo < hi")
        if -(-(self.hi - self.lo) // self.block) > MAX_SUMS:
            raise ValueError(f"COMPARE asks for more than {MAX_SUMS} blocks")


class Sums(Struct, **_BUS):
    """The answer to COMPARE: one fingerprint per block; none if I do not hold
    every seq up to ``hi``."""
    TYPE: ClassVar[str] = "SUMS"
    sender: ServerId
    origin: ServerId
    lo: Count
    hi: Seq
    block: Seq
    sums: Annotated[list[Fingerprint], Meta(max_length=MAX_SUMS)]


class CopyRange(Struct, **_BUS):
    """Give me your copies of the events of ``origin`` with seq in ``(lo, hi]``."""
    TYPE: ClassVar[str] = "RANGE"
    sender: ServerId
    origin: ServerId
    lo: Count
    hi: Seq

    def __post_init__(self) -> None:
        if not 0 < self.hi - self.lo <= RANGE_MAX:
            raise ValueError(f"RANGE needs lo < hi <= lo + {RANGE_MAX}")


class Copies(Struct, **_BUS):
    """The answer to RANGE: my copies, in seq order; none if I do not hold them all."""
    TYPE: ClassVar[str] = "COPIES"
    sender: ServerId
    origin: ServerId
    lo: Count
    hi: Seq
    events: Annotated[list[Event], Meta(max_length=RANGE_MAX)]


Message = Union[Request, Reply, Requests, Replies, Ready, Heartbeat, Leave, EventBatch, Beat, Bye, Election,
                Answer, Coordinator, TimeQuery, TimeReply, TimeAdjust, Fetch, Events, Ack,
                Compare, Sums, CopyRange, Copies]
MESSAGES: dict[str, type] = {cls.TYPE: cls for cls in Message.__args__}
"""Every message type by its wire name."""

# the names the rest of the code uses for the wire types
REQUEST, REPLY = Request.TYPE, Reply.TYPE
REQUESTS, REPLIES = Requests.TYPE, Replies.TYPE
READY, HEARTBEAT, LEAVE = Ready.TYPE, Heartbeat.TYPE, Leave.TYPE
EVENT, BEAT, BYE = EventBatch.TYPE, Beat.TYPE, Bye.TYPE
ELECTION, ANSWER, COORDINATOR = Election.TYPE, Answer.TYPE, Coordinator.TYPE
TIME_QUERY, TIME_REPLY, TIME_ADJUST = TimeQuery.TYPE, TimeReply.TYPE, TimeAdjust.TYPE
FETCH, EVENTS, ACK = Fetch.TYPE, Events.TYPE, Ack.TYPE
COMPARE, SUMS, RANGE, COPIES = Compare.TYPE, Sums.TYPE, CopyRange.TYPE, Copies.TYPE


def fields_of(msg_type: str) -> list[str]:
    """The wire names of a message type's fields (for the documentation's tables)."""
    return [f.encode_name for f in msgspec.structs.fields(MESSAGES[msg_type])]


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


# --- routes: which socket takes which messages, behind which envelope -------------
@dataclass(frozen=True)
class Route:
    """One kind of socket: the messages it accepts and the envelope frames in front."""
    name: str
    accepts: frozenset[str]
    envelope: int = 0


CLIENT_TO_BROKER = Route("frontend", frozenset({REQUEST}), envelope=1)
"""The broker's frontend ROUTER: users' requests, behind the user's identity."""
SERVER_TO_BROKER = Route("backend", frozenset({REPLY, READY, HEARTBEAT, LEAVE}), envelope=2)
"""The broker's backend ROUTER: [server identity, route] in front."""
BROKER_TO_SERVER = Route("broker", frozenset({REQUEST, HEARTBEAT}), envelope=1)
"""A server's DEALER to the broker: [route] in front (empty for the broker's HB)."""
FAST_TO_SERVER = Route("fast", frozenset({REQUEST, REQUESTS}), envelope=1)
"""A server's DEALER to the broker's fast path: requests, one or several, behind the
user's identity (``broker/fast_path.py``)."""
BROKER_TO_CLIENT = Route("reply", frozenset({REPLY}))
"""A user's DEALER on the routed frontend: replies only."""
FAST_TO_CLIENT = Route("fast reply", frozenset({REPLY, REPLIES}))
"""A user's DEALER on the fast path: replies, one or several in a ``REPS``."""
BUS = Route("bus", frozenset({EVENT, BEAT, BYE, ELECTION, ANSWER, COORDINATOR,
                              TIME_QUERY, TIME_REPLY, TIME_ADJUST}))
PEER_REQUEST = Route("peer", frozenset({FETCH, ACK, COMPARE, RANGE}), envelope=1)
"""A server's peer ROUTER: FETCH, ACK and the repair's questions, behind the asking
DEALER's identity."""
PEER_REPLY = Route("peer reply", frozenset({EVENTS, SUMS, COPIES}))
"""A server's DEALER to a peer: the answers."""


class _Decoders(dict):
    """A decoder per message type, made when the first message of its type is decoded:
    a user's command decodes replies only, and making all 21 cost it ~1 ms."""

    def __missing__(self, msg_type: str) -> msgspec.json.Decoder:
        decoder = self[msg_type] = msgspec.json.Decoder(MESSAGES[msg_type])
        return decoder


_decoders = _Decoders()
_encoder = msgspec.json.Encoder()
_MAX_STAMP_DIGITS = len(str(MAX_STAMP))


@dataclass(frozen=True, slots=True)
class Incoming:
    """A decoded message: its envelope frames, the sender's stamp, the message."""
    envelope: list[bytes]
    lamport: int
    msg: Any

    @property
    def type(self) -> str:
        return self.msg.TYPE


def decode(frames: list[bytes], route: Route) -> Incoming:
    """Parse one message as received on ``route``; ProtocolError for anything else."""
    n = route.envelope
    if len(frames) != n + 3:
        raise ProtocolError(f"expected {n + 3} frames on the {route.name} socket, got {len(frames)}")
    raw_type, raw_lamport, raw_body = frames[n], frames[n + 1], frames[n + 2]
    try:
        msg_type = raw_type.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("message type is not ASCII") from None
    if msg_type not in route.accepts:
        if msg_type in MESSAGES:
            raise ProtocolError(f"{msg_type} is not accepted on the {route.name} socket")
        raise ProtocolError(f"unknown message type {msg_type[:20]!r}")
    if not raw_lamport.isdigit() or len(raw_lamport) > _MAX_STAMP_DIGITS:
        raise ProtocolError("lamport frame is not a non-negative integer")
    lamport = int(raw_lamport)
    if lamport >= MAX_STAMP:
        raise ProtocolError(f"lamport stamp {lamport} is not below {MAX_STAMP}")
    try:
        msg = _decoders[msg_type].decode(raw_body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ProtocolError(f"{msg_type}: {_readable(str(exc))}") from None
    return Incoming(frames[:n], lamport, msg)


def decode_request(body: bytes) -> Request:
    """One request of a ``REQS``, validated as a ``REQ``'s body; ProtocolError."""
    try:
        return _decoders[REQUEST].decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ProtocolError(f"{REQUEST}: {_readable(str(exc))}") from None


def pack(field: str, bodies: list[bytes]) -> bytes:
    """The body of a ``REQS`` or ``REPS`` from its members' encoded bodies, joined as
    they are (each was encoded once, by ``encode_body``)."""
    return b'{"%s":[%s]}' % (field.encode(), b",".join(bodies))


def batches(items: list, size=len, most: int = FAST_BATCH,
            most_bytes: int = FAST_BATCH_BYTES) -> list[list]:
    """``items`` cut, in order, into runs one ``REQS`` or ``REPS`` may carry: at most
    ``most`` of them, and at most ``most_bytes`` of ``size(item)`` unless one item
    alone is bigger (it goes alone)."""
    out: list[list] = []
    run: list = []
    total = 0
    for item in items:
        n = size(item)
        if run and (len(run) == most or total + n > most_bytes):
            out.append(run)
            run, total = [], 0
        run.append(item)
        total += n
    if run:
        out.append(run)
    return out


def encode_body(msg) -> bytes:
    """A message's body alone (a member of a ``REQS`` or ``REPS``)."""
    return _encoder.encode(msg)


def sent_by(frames: list[bytes], server_id: int) -> bool:
    """A bus message whose sender is ``server_id``, told without decoding it: every
    bus message's body starts with its sender (the first field), and a server hears
    its own messages back only to know that the bus works."""
    return len(frames) == 3 and frames[2].startswith(b'{"from":%d,' % server_id)


def encode(msg, lamport: int) -> list[bytes]:
    """``[type, lamport, body]`` of a message."""
    return [msg.TYPE.encode(), b"%d" % lamport, _encoder.encode(msg)]


def to_builtins(obj) -> Any:
    """A message, event or status as plain dicts and lists (``"from"`` keys, JSON-ready)."""
    return msgspec.to_builtins(obj)


def dumps(obj: Any) -> bytes:
    return _encoder.encode(obj)


def loads(raw: bytes | str) -> Any:
    return msgspec.json.decode(raw)


def convert(obj: Any, cls: type):
    """Validate plain data (an event read from TinyDB, say) as ``cls``; ProtocolError if invalid."""
    try:
        return msgspec.convert(obj, cls)
    except msgspec.ValidationError as exc:
        raise ProtocolError(str(exc)) from None


_event_decoder = msgspec.json.Decoder(Event)


def decode_event(raw: bytes) -> Event:
    """One event from its JSON (a log line); ProtocolError if malformed or invalid."""
    try:
        return _event_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ProtocolError(str(exc)) from None


def validate(msg) -> None:
    """Check a message built in this process as its receiver would (ProtocolError)."""
    try:
        _decoders[msg.TYPE].decode(_encoder.encode(msg))
    except msgspec.ValidationError as exc:
        raise ProtocolError(str(exc)) from None


def request(rid: str, op: str, user: str | None, args: dict, server: int | None,
            time: float, token: str | None = None, stamp: int | None = None) -> Request:
    """A validated Request from plain arguments (the CLI's and the bots'); ProtocolError."""
    text = args.get("text")
    if isinstance(text, str) and not text.strip():
        raise ProtocolError("text must not be empty")
    try:
        return msgspec.convert({"rid": rid, "op": op, "user": user, "args": args,
                                "server": server, "time": time, "token": token,
                                "stamp": stamp}, Request)
    except msgspec.ValidationError as exc:
        raise ProtocolError(_readable(str(exc))) from None


def with_args(req: Request, **changes) -> Request:
    """The same request (same rid: a retry, as the server sees it) with some arguments changed."""
    return msgspec.structs.replace(req, args=msgspec.structs.replace(req.args, **changes))


def _readable(error: str) -> str:
    """msgspec's message for a user, with the offending field named plainly."""
    if "regex" in error and "$.user" in error:
        return "user name must match [a-z0-9_]{1,32}"
    if "$.args.text" in error and "regex" in error:
        return "text must not contain control characters or direction overrides"
    if "$.args.text" in error and "length >= 1" in error:
        return "text must not be empty"
    if "$.args.text" in error and "length" in error:
        return f"text must be 1 to {MAX_TEXT} characters"
    if "regex '^tcp://" in error:
        return (f"{error.rsplit(' - at ', 1)[-1]}: an endpoint must be tcp://HOST:PORT, "
                f"not a wildcard, port 1 to 65535")
    if "$.args.limit" in error:
        return f"limit must be a whole number from 1 to {MAX_LIMIT}"
    if "blank" in error:
        return "text must not be empty"
    if "$.args.password" in error:
        return f"password must be 1 to {MAX_PASSWORD} characters"
    if "$.token" in error:
        return "token must be 43 to 128 characters of [A-Za-z0-9_-]"
    for name in ("target", "to", "with"):
        if f"$.args.{name}" in error:
            return f"{name!r} must be a user name matching [a-z0-9_]{{1,32}}"
    return error


def check_user_name(name: Any, what: str = "user name") -> str:
    if not isinstance(name, str) or not USER_RE.fullmatch(name):
        raise ProtocolError(f"{what} must match [a-z0-9_]{{1,32}}, got {str(name)[:40]!r}")
    return name


class Endpoint:
    """One socket of a process's loop, with the process's Lamport clock: ``send``
    ticks the clock and stamps the message, ``receive`` decodes what the socket
    may take and merges the sender's stamp. No handler ticks or merges by hand."""

    def __init__(self, sock: zmq.Socket, route: Route, lamport,
                 max_lead: int | None = None) -> None:
        self.sock = sock
        self.route = route
        self.lamport = lamport
        self.max_lead = max_lead
        """For sockets strangers can reach: refuse stamps this far above our clock."""

    def send(self, msg, *envelope: bytes, flags: int = 0) -> int:
        """Send ``msg`` behind ``envelope``; returns its stamp (zmq.Again with NOBLOCK)."""
        stamp = self.lamport.tick()
        send(self.sock, [*envelope, *encode(msg, stamp)], flags)
        return stamp

    def relay(self, msg_type: str, body: bytes, *envelope: bytes, flags: int = 0) -> int:
        """Send a body as it is, with my stamp: a message received and validated here,
        passed on, or a ``REQS``/``REPS`` packed here (``pack``)."""
        stamp = self.lamport.tick()
        send(self.sock, [*envelope, msg_type.encode(), b"%d" % stamp, body], flags)
        return stamp

    def receive(self, frames: list[bytes]) -> Incoming:
        """Decode and merge; ProtocolError (nothing merged) for anything refused."""
        incoming = decode(frames, self.route)
        if self.max_lead is not None and incoming.lamport > self.lamport.value + self.max_lead:
            raise ProtocolError(f"lamport stamp {incoming.lamport} is far ahead of "
                                f"this process's clock ({self.lamport.value})")
        self.lamport.merge(incoming.lamport)
        return incoming


# --- fast multipart I/O ----------------------------------------------------------
# pyzmq's send_multipart/recv_multipart spend most of their time on enum flag
# arithmetic and RCVMORE look-ups (measured: 6-19 us to send 4 frames, 1.2 us
# here). These call the socket's C methods with plain integer flags.
_SNDMORE = int(zmq.SNDMORE)
_raw_send = zmq.backend.Socket.send
_raw_recv = zmq.backend.Socket.recv


def send(sock: zmq.Socket, frames: list[bytes], flags: int = 0) -> None:
    """Send a multipart message; raises zmq.Again with NOBLOCK like send_multipart."""
    flags = int(flags)
    for frame in frames[:-1]:
        _raw_send(sock, frame, flags | _SNDMORE)
    _raw_send(sock, frames[-1], flags)


def recv(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    """Receive a whole multipart message as a list of bytes."""
    part = _raw_recv(sock, int(flags), False)
    frames = [part.bytes]
    while part.more:
        part = _raw_recv(sock, 0, False)
        frames.append(part.bytes)
    return frames


def rid_of(body: bytes) -> str:
    """Best effort: the rid of a message we could not accept, for the error reply."""
    try:
        decoded = loads(body)
        rid = decoded.get("rid") if isinstance(decoded, dict) else None
        return rid if isinstance(rid, str) and RID_RE.fullmatch(rid) else "?"
    except Exception:  # noqa: BLE001 - any garbage: no rid
        return "?"


USER_ID = "User-Id"


def recv_from(sock: zmq.Socket, flags: int = 0) -> tuple[list[bytes], str]:
    """``recv`` and who sent it: the ``User-Id`` the ZAP handler gave the connection it
    came on (``common/keys.py``: ``server-N`` for an allowlisted key)."""
    part = _raw_recv(sock, int(flags), False)
    try:
        who = part.get(USER_ID)
    except zmq.ZMQError:                     # a connection no ZAP handler named
        who = ""
    frames = [part.bytes]
    while part.more:
        part = _raw_recv(sock, 0, False)
        frames.append(part.bytes)
    return frames, who
