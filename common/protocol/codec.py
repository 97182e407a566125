"""Messages to frames and back: the registry of message types, which socket accepts
which of them (``Route``), and the decoding, encoding and validation every process
does.

``decode`` checks a message as received on a route (its frames, type, Lamport stamp
and body) and raises ``ProtocolError`` with a reason for anything else. The decoders
are made on first use (``_Decoders``), so a user's command, which reads replies only,
never makes the others. The rest turn plain data into validated messages
(``request``, ``convert``, ``validate``) and messages into bodies (``encode``,
``encode_body``, and ``pack`` for a ``REQS`` or ``REPS``); ``_readable`` puts
msgspec's errors plainly for a user.
"""

from dataclasses import dataclass
from typing import Any, Union

import msgspec

from .client import Replies, Reply, Request, Requests
from .cluster import (Ack, Answer, Beat, Bye, Compare, Coordinator, Copies, CopyRange,
                      Election, EventBatch, Events, Fetch, Heartbeat, Leave, Ready, Sums,
                      TimeAdjust, TimeQuery, TimeReply)
from .events import Event
from .limits import (FAST_BATCH, FAST_BATCH_BYTES, MAX_LIMIT, MAX_PASSWORD, MAX_STAMP,
                     MAX_TEXT, RID_RE, USER_RE, ProtocolError)

# --- every message type, by its wire name -------------------------------------
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


def rid_of(body: bytes) -> str:
    """Best effort: the rid of a message we could not accept, for the error reply."""
    try:
        decoded = loads(body)
        rid = decoded.get("rid") if isinstance(decoded, dict) else None
        return rid if isinstance(rid, str) and RID_RE.fullmatch(rid) else "?"
    except Exception:  # noqa: BLE001 - any garbage: no rid
        return "?"
