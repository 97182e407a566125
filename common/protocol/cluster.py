"""The messages the cluster's processes exchange among themselves, never a user's:
control between a server and the broker, the bus every server publishes on, the
requests and replies between two servers' peer ports, and the repair's questions.

* server <-> broker (the backend, empty route): ``READY`` and ``LEAVE`` from a
  server, ``HB`` both ways (a server's carries its ``ServerStatus`` row).
* the bus: a server's new events (``EVENT``), its heartbeat (``BEAT``), ``BYE``,
  the bully election and the rounds of Berkeley clock synchronization.
* a server's peer port: ``FETCH`` -> ``EVENTS`` (catching up) and ``ACK``, and the
  anti-entropy repair, ``COMPARE`` -> ``SUMS`` and ``RANGE`` -> ``COPIES``.

Every message between servers names its ``sender`` first, ``"from"`` on the wire
(``_BUS``), which lets ``sent_by`` tell a server's own bus messages without
decoding them.
"""

from typing import Annotated, ClassVar, Optional

from msgspec import Meta, Struct

from .events import Event
from .limits import (FETCH_LIMIT, MAX_SERVER_ID, MAX_SUMS, RANGE_MAX, Count, Digest,
                     Durability, Epoch, Fingerprint, Fingerprints, PeerEndpoint, Phase,
                     Seconds, Seq, ServerId, ServerIds, Stamp, UnixTime, VersionVector,
                     _message)


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
