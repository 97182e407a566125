"""Users waiting in ``listen``: long polls parked until something arrives for them.

A parked request is answered as soon as an applied event gives its user a post
to be notified of or a message; the answer is a SEEN event, replicated like any
write, so an item is pushed exactly once even if the listener reconnects to
another server. A request that waits ``wait`` seconds in vain is answered empty,
and the client asks again.

Parked polls are indexed by the user they wait for, so a new post costs work
only for its author's followers, however many others are listening.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

from common import protocol as P


@dataclass
class Parked:
    route: bytes
    rid: str
    user: str
    args: P.Args
    deadline: float          # monotonic
    token: str | None = None  # checked again when it is answered (logged out meanwhile?)


class Listeners:
    def __init__(self) -> None:
        self.by_user: dict[str, dict[str, Parked]] = {}    # user -> rid -> parked poll
        self._rids: dict[str, str] = {}                    # rid -> user
        self._deadlines: list[tuple[float, str]] = []       # heap of (deadline, rid)

    def __len__(self) -> int:
        return len(self._rids)

    def park(self, route: bytes, rid: str, user: str, args: P.Args, deadline: float,
             token: str | None = None) -> None:
        self.drop(rid)
        self.by_user.setdefault(user, {})[rid] = Parked(route, rid, user, args, deadline, token)
        self._rids[rid] = user
        heapq.heappush(self._deadlines, (deadline, rid))

    def drop(self, rid: str) -> Parked | None:
        """Forget the parked listen ``rid``: it was re-sent (a retry, or a cancel)."""
        user = self._rids.pop(rid, None)
        if user is None:
            return None
        polls = self.by_user[user]
        parked = polls.pop(rid)
        if not polls:
            del self.by_user[user]
        return parked

    def take(self, users) -> list[Parked]:
        """The parked polls of ``users`` (to be answered or re-parked by the caller)."""
        taken = []
        for user in users:
            for rid in list(self.by_user.get(user, ())):
                taken.append(self.drop(rid))
        return taken

    def take_all(self) -> list[Parked]:
        return self.take(list(self.by_user))

    def take_expired(self, now: float) -> list[Parked]:
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, rid = heapq.heappop(self._deadlines)
            user = self._rids.get(rid)
            if user is not None and self.by_user[user][rid].deadline == deadline:
                expired.append(self.drop(rid))
        return expired

    def next_deadline(self) -> float | None:
        while self._deadlines:
            deadline, rid = self._deadlines[0]
            user = self._rids.get(rid)
            if user is not None and self.by_user[user][rid].deadline == deadline:
                return deadline
            heapq.heappop(self._deadlines)          # stale: dropped or re-parked
        return None
