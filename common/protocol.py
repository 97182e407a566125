"""The wire protocol: every frame layout, message type, field and operation.

Nothing else in the code base spells a message type or a frame layout.

Frames
------
Every message is three frames, ``[type, lamport, body]``:

* ``type``    ASCII message type (below); on the bus it doubles as the topic.
* ``lamport`` the sender's Lamport clock after its send tick, ASCII decimal.
* ``body``    one JSON object (orjson), fields per ``SCHEMAS``.

Routing envelopes come in front where a ROUTER socket needs them:

* client DEALER  -> broker frontend ROUTER: ``[type, lamport, body]``
* broker backend ROUTER -> server DEALER:  ``[route, type, lamport, body]`` where
  ``route`` is the client's identity, or empty for broker<->server control.
* server peer ROUTER <- peer DEALER:       ``[type, lamport, body]``
* bus (PUB -> broker XSUB/XPUB -> SUB):    ``[type, lamport, body]``

``decode()`` raises ``ProtocolError`` for anything malformed, so a bad frame
becomes a clear error (or is dropped and logged), never a crash.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
import zmq

PROTOCOL_VERSION = "social/1"

# --- message types ---------------------------------------------------------
# client <-> broker <-> server
REQUEST = "REQ"
REPLY = "REP"
# server <-> broker control (backend, empty route)
READY = "READY"            # server -> broker: I am caught up, route to me
HEARTBEAT = "HB"           # both ways: I am alive (+ server status for `status`)
LEAVE = "LEAVE"            # server -> broker: stop routing to me, I am going
# bus (every server publishes, every server subscribes)
EVENT = "EVENT"            # new writes of one origin, replicated to every server, + its vv
BEAT = "BEAT"              # server heartbeat on the bus: phase, vv, coordinator
BYE = "BYE"                # I am leaving the cluster
ELECTION = "ELECTION"      # bully: I call an election (to higher ids)
ANSWER = "ANSWER"          # bully: a higher id is alive and takes over
COORDINATOR = "COORD"      # bully: I am the coordinator for this epoch
TIME_QUERY = "TIME_Q"      # Berkeley: coordinator asks every server its time
TIME_REPLY = "TIME_R"      # Berkeley: a server's reading
TIME_ADJUST = "TIME_ADJ"   # Berkeley: each server's own correction
# server <-> server request/reply (peer ROUTER)
FETCH = "FETCH"            # give me events after these sequence numbers
EVENTS = "EVENTS"          # a chunk of events answering FETCH
ACK = "ACK"                # to an origin: my version vector, the events I now hold durably
# push to listening users (server -> broker -> user)
PUSH = "PUSH"

# --- schemas: every field of every message body, with its type ---------------
# (the documentation's message table is checked against this dict by a test)
_INT = int
_NUM = (int, float)
_STR = str
_DICT = dict
_LIST = list
_OPT_INT = (int, type(None))
_OPT_STR = (str, type(None))

SCHEMAS: dict[str, dict[str, Any]] = {
    REQUEST: {"rid": _STR, "op": _STR, "user": _OPT_STR, "args": _DICT,
              "server": _OPT_INT, "time": _NUM},
    REPLY: {"rid": _STR, "ok": bool, "server": _OPT_INT, "time": _NUM},
    READY: {"id": _INT},
    HEARTBEAT: {"id": _OPT_INT},
    LEAVE: {"id": _INT},
    EVENT: {"from": _INT, "events": _LIST, "vv": _DICT},
    ACK: {"from": _INT, "vv": _DICT},
    BEAT: {"from": _INT, "phase": _STR, "vv": _DICT, "epoch": _INT,
           "coordinator": _OPT_INT},
    BYE: {"from": _INT},
    ELECTION: {"from": _INT, "epoch": _INT},
    ANSWER: {"from": _INT, "to": _INT, "epoch": _INT},
    COORDINATOR: {"from": _INT, "epoch": _INT},
    TIME_QUERY: {"from": _INT, "epoch": _INT, "round": _INT, "probe": _INT},
    TIME_REPLY: {"from": _INT, "to": _INT, "round": _INT, "probe": _INT, "time": _NUM},
    TIME_ADJUST: {"from": _INT, "epoch": _INT, "round": _INT, "corrections": _DICT},
    FETCH: {"from": _INT, "after": _DICT, "limit": _INT},
    EVENTS: {"from": _INT, "events": _LIST, "vv": _DICT, "more": bool},
    PUSH: {"user": _STR, "item": _DICT},
}

BUS_TYPES = (EVENT, BEAT, BYE, ELECTION, ANSWER, COORDINATOR,
             TIME_QUERY, TIME_REPLY, TIME_ADJUST)

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

WRITE_OPS = frozenset({OP_REGISTER, OP_POST, OP_FOLLOW, OP_UNFOLLOW, OP_DM,
                       OP_NOTIFICATIONS, OP_LISTEN})
"""Operations that create a replicated event (notifications and listen mark items shown)."""
READ_OPS = frozenset({OP_FEED, OP_FOLLOWING, OP_USERS, OP_CHAT})
BROKER_OPS = frozenset({OP_STATUS})
MAX_LISTEN_WAIT = 30.0
SEEN_OPS = frozenset({OP_LISTEN, OP_NOTIFICATIONS})
"""Operations that mark items seen: the broker sends each user's to one server."""
ALL_OPS = WRITE_OPS | READ_OPS | BROKER_OPS

# Arguments each operation takes: name -> type (all required).
OP_ARGS: dict[str, dict[str, Any]] = {
    OP_REGISTER: {},
    OP_POST: {"text": _STR},
    OP_FEED: {"limit": _INT},
    OP_FOLLOW: {"target": _STR},
    OP_UNFOLLOW: {"target": _STR},
    OP_FOLLOWING: {},
    OP_USERS: {},
    OP_DM: {"to": _STR, "text": _STR},
    OP_CHAT: {"with": _STR, "limit": _INT},
    OP_NOTIFICATIONS: {},
    OP_STATUS: {},
    OP_LISTEN: {"wait": _NUM, "since": _INT},
}
"""``listen`` is a long poll: the server answers as soon as there are posts by
followed users not yet shown or direct messages (stamped after ``since``) not
yet delivered to this user, marks them shown, or answers empty after ``wait``."""

# --- event kinds (the replicated writes) ---------------------------------------
EV_REGISTER = "register"
EV_POST = "post"
EV_FOLLOW = "follow"
EV_UNFOLLOW = "unfollow"
EV_DM = "dm"
EV_SEEN = "seen"
EVENT_KINDS = frozenset({EV_REGISTER, EV_POST, EV_FOLLOW, EV_UNFOLLOW, EV_DM, EV_SEEN})
EVENT_DATA = {EV_REGISTER: {}, EV_POST: {"text": str}, EV_FOLLOW: {"target": str},
              EV_UNFOLLOW: {"target": str}, EV_DM: {"to": str, "text": str},
              EV_SEEN: {"shown": list, "delivered": list}}
"""SEEN: posts shown to the user (notifications, listen) and messages pushed (listen)."""
EVENT_FIELDS = {"id": _STR, "kind": _STR, "user": _STR, "lamport": _INT,
                "ts": _NUM, "origin": _INT, "seq": _INT, "data": _DICT}

# --- error codes in replies ------------------------------------------------------
ERR_BAD_REQUEST = "bad_request"      # malformed or invalid: do not retry
ERR_UNKNOWN_USER = "unknown_user"    # names a user who never used the system
ERR_UNAVAILABLE = "unavailable"      # no server can take it now: retry
ERR_NO_SUCH_SERVER = "no_such_server"  # --server names a server not serving
ERR_INTERNAL = "internal"
RETRYABLE_ERRORS = frozenset({ERR_UNAVAILABLE})

# --- limits ---------------------------------------------------------------------
USER_RE = re.compile(r"[a-z0-9_]{1,32}")
MAX_TEXT = 500
MAX_LIMIT = 1000
MAX_LAMPORT = 10 ** 15
"""Stamps above this are refused, so one merge of a forged stamp cannot push a
clock past what the 18-digit lamport frame can carry."""
DEFAULT_LIMIT = 20


class ProtocolError(ValueError):
    """A frame or body that does not follow this protocol."""


@dataclass(frozen=True, slots=True)
class Message:
    type: str
    lamport: int
    body: dict

    def frames(self) -> list[bytes]:
        return encode(self.type, self.lamport, self.body)


_DUMP_OPTIONS = orjson.OPT_NON_STR_KEYS
"""Version vectors are keyed by server id: sent as JSON strings, read back by ``int()``."""


def encode(msg_type: str, lamport: int, body: dict) -> list[bytes]:
    return [msg_type.encode(), str(lamport).encode(), orjson.dumps(body, option=_DUMP_OPTIONS)]


# --- fast multipart I/O ----------------------------------------------------------
# pyzmq's send_multipart/recv_multipart spend most of their time on enum flag
# arithmetic and RCVMORE look-ups (measured: 6-19 us to send 4 frames, 1.2 us
# here). These two call the socket's C methods with plain integer flags.
_SNDMORE = int(zmq.SNDMORE)
_raw_send = zmq.backend.Socket.send
_raw_recv = zmq.backend.Socket.recv


def send(sock: zmq.Socket, frames: list[bytes], flags: int = 0) -> None:
    """Send a multipart message; raises zmq.Again with NOBLOCK like send_multipart."""
    flags = int(flags)
    for frame in frames[:-1]:
        _raw_send(sock, frame, flags | _SNDMORE)
    _raw_send(sock, frames[-1], flags)


_raw_get = zmq.backend.Socket.get
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def readable(sock: zmq.Socket) -> bool:
    """A message is waiting (``getsockopt(EVENTS) & POLLIN`` without the enum wrapping)."""
    return bool(_raw_get(sock, _EVENTS) & _POLLIN)


def recv(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    """Receive a whole multipart message as a list of bytes."""
    part = _raw_recv(sock, int(flags), False)
    frames = [part.bytes]
    while part.more:
        part = _raw_recv(sock, 0, False)
        frames.append(part.bytes)
    return frames


def decode(frames: list[bytes]) -> Message:
    """Parse ``[type, lamport, body]``; raise ProtocolError for anything else."""
    if len(frames) != 3:
        raise ProtocolError(f"expected 3 frames, got {len(frames)}")
    raw_type, raw_lamport, raw_body = frames
    try:
        msg_type = raw_type.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("message type is not ASCII") from None
    schema = SCHEMAS.get(msg_type)
    if schema is None:
        raise ProtocolError(f"unknown message type {msg_type[:20]!r}")
    if not raw_lamport.isdigit() or len(raw_lamport) > 18:
        raise ProtocolError("lamport frame is not a non-negative integer")
    lamport = int(raw_lamport)
    if lamport > MAX_LAMPORT:
        raise ProtocolError(f"lamport stamp above {MAX_LAMPORT}")
    try:
        body = orjson.loads(raw_body)
    except orjson.JSONDecodeError:
        raise ProtocolError("body is not JSON") from None
    if not isinstance(body, dict):
        raise ProtocolError("body is not a JSON object")
    check_fields(body, schema, msg_type)
    return Message(msg_type, lamport, body)


def check_fields(body: dict, schema: dict[str, Any], what: str) -> None:
    for name, kind in schema.items():
        if name not in body:
            raise ProtocolError(f"{what}: missing field {name!r}")
        value = body[name]
        # bool is an int in Python; refuse it where a number is meant
        if isinstance(value, bool) and kind is not bool:
            raise ProtocolError(f"{what}: field {name!r} has the wrong type")
        if not isinstance(value, kind):
            raise ProtocolError(f"{what}: field {name!r} has the wrong type")


# --- validation of user input ------------------------------------------------------
def check_user_name(name: Any, what: str = "user name") -> str:
    if not isinstance(name, str) or not USER_RE.fullmatch(name):
        raise ProtocolError(f"{what} must match [a-z0-9_]{{1,32}}, got {str(name)[:40]!r}")
    return name


def check_text(text: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ProtocolError("text must not be empty")
    if len(text) > MAX_TEXT:
        raise ProtocolError(f"text is {len(text)} characters; the limit is {MAX_TEXT}")
    return text


def check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ProtocolError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return limit


def check_request(body: dict) -> None:
    """Validate a REQUEST body's operation and arguments (not the state)."""
    op = body["op"]
    if op not in ALL_OPS:
        raise ProtocolError(f"unknown operation {str(op)[:20]!r}")
    if len(body["rid"]) == 0 or len(body["rid"]) > 64:
        raise ProtocolError("rid must be 1 to 64 characters")
    server = body.get("server")
    if server is not None and not 1 <= server <= 99:
        raise ProtocolError("server must be an id from 1 to 99")
    if op in BROKER_OPS:
        return
    check_user_name(body["user"])
    args = body["args"]
    check_fields(args, OP_ARGS[op], op)
    if "text" in OP_ARGS[op]:
        check_text(args["text"])
    if "limit" in OP_ARGS[op]:
        check_limit(args["limit"])
    if op == OP_LISTEN and not 0 <= args["wait"] <= MAX_LISTEN_WAIT:
        raise ProtocolError(f"wait must lie between 0 and {MAX_LISTEN_WAIT:g} seconds")
    for name in ("target", "to", "with"):
        if name in OP_ARGS[op]:
            check_user_name(args[name], f"{name!r}")
            if args[name] == body["user"] and op in (OP_FOLLOW, OP_UNFOLLOW):
                raise ProtocolError("you cannot follow yourself")
            if args[name] == body["user"] and op == OP_DM:
                raise ProtocolError("you cannot message yourself")


def check_event(event: Any) -> dict:
    if not isinstance(event, dict):
        raise ProtocolError("event is not an object")
    check_fields(event, EVENT_FIELDS, "event")
    if event["kind"] not in EVENT_KINDS:
        raise ProtocolError(f"unknown event kind {str(event['kind'])[:20]!r}")
    if event["seq"] < 1 or event["origin"] < 1:
        raise ProtocolError("event origin and seq must be positive")
    check_fields(event["data"], EVENT_DATA[event["kind"]], f"{event['kind']} event")
    ids = list(event["data"].get("shown", ())) + list(event["data"].get("delivered", ()))
    if not all(isinstance(x, str) for x in ids):
        raise ProtocolError("seen event: shown and delivered must list ids")
    return event


def parse_vv(raw: dict) -> dict[int, int]:
    """A version vector off the wire (JSON keys are strings) -> {server id: seq}."""
    try:
        vv = {int(k): v for k, v in raw.items()}
    except (TypeError, ValueError):
        raise ProtocolError("version vector keys must be server ids") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vv.values()):
        raise ProtocolError("version vector values must be sequence numbers")
    return vv


def order_key(event: dict) -> tuple[int, str]:
    """The one total order of events on every server: Lamport stamp, then id."""
    return (event["lamport"], event["id"])


def copy_key(event: dict) -> tuple[int, str, int, int]:
    """Between two events made of one request (a retry that reached two servers),
    the one with the smaller copy key counts, on every server."""
    return (event["lamport"], event["id"], event["origin"], event["seq"])


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=_DUMP_OPTIONS)


def dumps_sorted(obj: Any) -> bytes:
    """Canonical encoding (sorted keys), for hashing."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | _DUMP_OPTIONS)


def loads(raw: bytes | str) -> Any:
    return orjson.loads(raw)
