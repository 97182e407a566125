"""Raw frames for tests that speak to sockets as a stranger would: plain JSON
bodies, no validation on the way out, none on the way in beyond the frame shape.

The system itself builds and reads frames only through ``common.protocol``."""
from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Raw:
    type: str
    lamport: int
    body: dict


def frames(msg_type: str, lamport: int, body: dict) -> list[bytes]:
    """``[type, lamport, body]`` with ``body`` as JSON, whatever it holds."""
    return [msg_type.encode(), str(lamport).encode(), json.dumps(body).encode()]


def parse(raw: list[bytes]) -> Raw:
    """A message as it came: its type, stamp and JSON body."""
    assert len(raw) == 3, f"expected 3 frames, got {len(raw)}"
    return Raw(raw[0].decode(), int(raw[1]), json.loads(raw[2]))
