"""Users waiting in ``listen``: long polls parked until something arrives for them.

A parked request is answered as soon as an applied event gives its user a post
to be notified of or a message; the answer is a SEEN event, replicated like any
write, so an item is pushed exactly once even if the listener reconnects to
another server. A request that waits ``wait`` seconds in vain is answered empty,
and the client asks again.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Parked:
    route: bytes
    rid: str
    user: str
    args: dict
    deadline: float          # monotonic


class Listeners:
    def __init__(self) -> None:
        self.parked: list[Parked] = []

    def park(self, route: bytes, rid: str, user: str, args: dict, deadline: float) -> None:
        self.parked.append(Parked(route, rid, user, args, deadline))

    def drop(self, rid: str) -> None:
        """Forget the parked listen ``rid``: it was re-sent (a retry, or a cancel)."""
        self.parked = [p for p in self.parked if p.rid != rid]

    def take_all(self) -> list[Parked]:
        """Every parked request (to be re-planned after new events); the caller re-parks."""
        parked, self.parked = self.parked, []
        return parked

    def take_expired(self, now: float) -> list[Parked]:
        expired = [p for p in self.parked if now >= p.deadline]
        if expired:
            self.parked = [p for p in self.parked if now < p.deadline]
        return expired

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self.parked), default=None)
