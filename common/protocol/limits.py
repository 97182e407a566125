"""The protocol's limits and the field types that carry them: every bound a message,
a frame or a socket keeps, and the annotated types (``Meta``) message fields are
made of.

A field's range lives in its type (``Stamp``, ``UserName``, ``Text``...), so msgspec
checks it in C while it decodes, and every message that carries a stamp or a name
checks it the same way. The byte limits of the sockets (``MAX_REQUEST_BYTES`` on the
broker's frontend, ``MAX_BUS_BYTES`` on the bus...) stand beside the field limits
they follow from.

Here too is what every message type shares: ``ProtocolError``, the struct options
(``_message``: frozen, unknown fields refused) and ``absent``, which checks in one
look-up which fields a request's arguments or an event's data leave out.
"""

import itertools
import operator
import re
from typing import Annotated, Literal

from msgspec import Meta

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


# --- what every message shares ------------------------------------------------
class ProtocolError(ValueError):
    """A frame or body that does not follow this protocol."""


def _message(**options):
    """Struct options of every message: frozen, unknown fields refused."""
    return dict(frozen=True, forbid_unknown_fields=True, **options)


def absent(values: tuple) -> tuple[bool, ...]:
    """Which of ``values`` are None, in order (C-level: the check of every request and
    event runs it)."""
    return tuple(map(operator.is_, values, itertools.repeat(None, len(values))))
