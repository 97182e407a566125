"""Throttling of password guesses, per user, for the whole cluster.

Every login goes through the one broker and so does its reply: the broker sees
every failure of every server, in order, without a replicated counter (a
replicated one would trail by a round of replication, and every server would
have to agree on the count). So the broker counts them here: after
``free_failures`` failed logins of a user in a row, it refuses their next logins
for ``delay`` seconds, doubling with each further failure up to ``max_delay``; a
successful login resets the count. One login per user is let through at a time
(another with a new rid meanwhile is refused as ``unavailable``, and its client
retries it), so a burst of guesses sent at once cannot all be checked before the
first failures come back.

What it costs: a restarted broker starts counting again, and anyone can lock a
user's logins for a while by guessing (their open sessions keep working).
No socket here; ``Broker`` asks ``refuse`` and reports ``answered``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from common import protocol as P

IN_FLIGHT_FOR = 10.0
"""Seconds a login is taken to be in flight without an answer (then the server
that had it is taken to be gone, and another login may go)."""
MAX_TRACKED = 100_000
"""Users tracked at most; beyond, those neither blocked nor in flight are forgotten."""


@dataclass
class Guesses:
    failures: int = 0
    blocked_until: float = 0.0
    rid: str | None = None             # the login in flight
    sent_at: float = 0.0


class LoginThrottle:
    def __init__(self, free_failures: int = 5, delay: float = 1.0,
                 max_delay: float = 900.0) -> None:
        self.free_failures = free_failures
        self.delay = delay
        self.max_delay = max_delay
        self.users: dict[str, Guesses] = {}
        self.by_rid: dict[str, str] = {}

    def refuse(self, user: str, rid: str, now: float) -> tuple[str, str] | None:
        """Why this login of ``user`` may not go now, as (error code, why with the
        seconds to wait); or None: it goes (and is taken to be in flight until
        ``answered``). Too many failures: ``throttled``. Another login of the user in
        flight: ``unavailable``, which clients retry with backoff under the same rid
        (a user who runs two commands at once is not told to do it again)."""
        g = self.users.get(user)
        if g is None:
            self._make_room(now)
            g = self.users[user] = Guesses()
        if now < g.blocked_until:
            wait = math.ceil(g.blocked_until - now)
            return P.ERR_THROTTLED, (f"too many failed logins for {user} ({g.failures} "
                                     f"in a row): try again in {wait} s")
        if g.rid is not None and g.rid != rid and now - g.sent_at < IN_FLIGHT_FOR:
            return P.ERR_UNAVAILABLE, f"another login for {user} is under way: try again in 1 s"
        if g.rid is not None and g.rid != rid:
            self.by_rid.pop(g.rid, None)
        g.rid, g.sent_at = rid, now
        self.by_rid[rid] = user
        return None

    def answered(self, rid: str, ok: bool, code: str | None, now: float,
                 failure_code: str = "unauthorized") -> int | None:
        """The reply to a login went out: count a wrong password, reset on success.
        Returns the user's failures in a row (None if ``rid`` was no login)."""
        user = self.by_rid.pop(rid, None)
        if user is None:
            return None
        g = self.users.setdefault(user, Guesses())
        if g.rid == rid:
            g.rid = None
        if ok:
            g.failures, g.blocked_until = 0, 0.0
        elif code == failure_code:
            g.failures += 1
            if g.failures >= self.free_failures:
                extra = g.failures - self.free_failures
                g.blocked_until = now + min(self.max_delay, self.delay * 2 ** min(extra, 30))
        return g.failures

    def blocked_for(self, user: str, now: float) -> float:
        g = self.users.get(user)
        return max(0.0, g.blocked_until - now) if g else 0.0

    def _make_room(self, now: float) -> None:
        if len(self.users) < MAX_TRACKED:
            return
        for user, g in list(self.users.items()):
            if g.blocked_until <= now and (g.rid is None or now - g.sent_at >= IN_FLIGHT_FOR):
                if g.rid is not None:
                    self.by_rid.pop(g.rid, None)
                del self.users[user]
