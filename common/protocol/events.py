"""The replicated writes: one ``Event`` per write, the kinds of event with the data
each carries, and the two orders every server agrees on.

``(origin, seq)`` names an event everywhere. ``order_key`` puts all events in one
total order (Lamport stamp, then id), and ``copy_key`` chooses, between two events
made of one request, the copy that counts. Events travel inside the cluster's
messages (``EVENT``, ``EVENTS``, ``COPIES``: ``cluster.py``), and ``Event`` checks
one however a server reads it, from the wire or from its own log.
"""

import operator
from typing import Literal, Optional

import msgspec
from msgspec import Struct

from .limits import (Attempt, IdList, PasswordHash, Rid, Seq, ServerId, Stamp, Text,
                     TokenHash, UnixTime, UserName, _message, absent)

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
