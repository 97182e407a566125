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

Modules
-------
The package is split by responsibility, and ``common.protocol`` holds every name of
its modules, so the rest of the code base imports only it
(``from common import protocol as P``):

* ``limits``    every limit, the field types with their ranges, ``ProtocolError``.
* ``client``    client operations and their arguments, REQ, REP, REQS, REPS, error codes.
* ``events``    the replicated writes: ``Event``, its kinds and data, its two orders.
* ``cluster``   server <-> broker control, the bus, peer request/reply, the repair.
* ``codec``     the registry of message types, the routes, decoding and encoding.
* ``endpoint``  ``Endpoint`` and the fast multipart send and receive.
"""

from .limits import *    # noqa: F403 - the protocol's names are its modules' names
from .client import *    # noqa: F403
from .events import *    # noqa: F403
from .cluster import *   # noqa: F403
from .codec import *     # noqa: F403
from .endpoint import *  # noqa: F403

# the private names ``import *`` leaves out, which common.protocol has had as well
from .limits import _message  # noqa: F401
from .client import _ARG_NAMES, _ARGS_ABSENT, _arg_values  # noqa: F401
from .events import _DATA_ABSENT, _DATA_FIELDS, _data_values  # noqa: F401
from .cluster import _BUS  # noqa: F401
from .codec import (_MAX_STAMP_DIGITS, _Decoders, _decoders, _encoder,  # noqa: F401
                    _event_decoder, _readable)
from .endpoint import _SNDMORE, _raw_recv, _raw_send  # noqa: F401
