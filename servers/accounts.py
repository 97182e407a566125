"""Who may act as whom: passwords, session tokens, and the check of every request.

The replicated state (``servers/state.py``) says who owns a name (its ACCOUNT
event) and which token hashes are valid sessions; this module turns a request
into the data of an ACCOUNT, SESSION or LOGOUT event, and refuses every other
request whose token is not a valid session of its ``user``. It holds no socket.

Passwords are hashed with argon2id (``argon2-cffi``). A hash runs on the server's
one event-loop thread, so its cost is bounded twice: by its parameters (OWASP's
m=12 MiB, t=3, p=1 costs about 20 ms here) and by ``HashBudget``, which lets at
most ``auth_hashes_per_s`` hashes run per second and answers the rest
``unavailable`` (clients retry): a flood of logins costs the loop a bounded share.

Tokens are drawn by the client (``secrets.token_urlsafe(32)``: 256 random bits)
and sent in the login request; servers keep only their sha256 (enough for a
256-bit random secret: nothing to guess, no need for a slow hash). The client
draws it so that a login retried on a second server (same rid, the first died)
makes a copy of the same session, and a retry of an applied login can be answered
again: a server never knows a token again once it has hashed it.
"""
from __future__ import annotations

import functools
import hashlib
import re

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from common import protocol as P
from servers.requests import RequestError
from servers.state import SocialState

_PARAMS = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$")
MAX_MEMORY_KIB = 256 * 1024
MAX_TIME_COST = 16
MAX_PARALLELISM = 8
"""A stored hash asking for more than this is never verified (it would cost the
loop seconds or the host its memory): only a broken server could have made it."""


@functools.lru_cache(maxsize=4096)
def token_hash(token: str) -> str:
    """The sha256 a server keeps of a session token (cached: every request hashes its
    token, and a busy user's are the same)."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class HashBudget:
    """A token bucket: at most ``rate`` password hashes per second, ``rate`` at once."""

    def __init__(self, rate: float, now: float = 0.0) -> None:
        self.rate = rate
        self.tokens = rate
        self.at = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Accounts:
    def __init__(self, state: SocialState, *, time_cost: int = 3, memory_kib: int = 12288,
                 session_ttl: float = 30 * 86400.0, hashes_per_s: float = 20.0) -> None:
        self.state = state
        self.hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib,
                                     parallelism=1, type=Type.ID)
        self.session_ttl = session_ttl
        self.budget = HashBudget(hashes_per_s)

    @classmethod
    def from_config(cls, state: SocialState, config) -> "Accounts":
        return cls(state, time_cost=config.argon2_time_cost,
                   memory_kib=config.argon2_memory_kib, session_ttl=config.session_ttl,
                   hashes_per_s=config.auth_hashes_per_s)

    # --- every request ------------------------------------------------------------------
    def authorize(self, user: str, token: str | None, wall: float) -> P.Event:
        """The session that lets this request act as ``user``; RequestError(unauthorized)
        if the token is missing, unknown, someone else's, expired or logged out."""
        if token is None:
            raise RequestError(P.ERR_UNAUTHORIZED,
                               f"{user} is not logged in: log in first (login)")
        session = self.state.session_of(token_hash(token), user, wall)
        if session is None:
            raise RequestError(P.ERR_UNAUTHORIZED,
                               f"not a valid session of {user} (expired, logged out, or "
                               f"not theirs): log in again")
        return session

    # --- register, login, logout ----------------------------------------------------------
    def plan(self, op: str, user: str, args: P.Args, token: str | None, now: float,
             wall: float) -> tuple[str, P.EventData]:
        """The (kind, data) of the event a register, login or logout writes."""
        if op == P.OP_REGISTER:
            return P.EV_ACCOUNT, self.register(user, args.password, now)
        if op == P.OP_LOGIN:
            return P.EV_SESSION, self.login(user, args.password, token, now, wall)
        if op == P.OP_LOGOUT:
            self.authorize(user, token, wall)
            return P.EV_LOGOUT, P.EventData(token=token_hash(token))
        raise RequestError(P.ERR_BAD_REQUEST, f"{op} is not an account operation")

    def register(self, user: str, password: str, now: float) -> P.EventData:
        if self.state.owner(user) is not None:
            raise RequestError(P.ERR_NAME_TAKEN, f"the name {user!r} is taken")
        if len(password) < P.MIN_PASSWORD:
            raise RequestError(P.ERR_BAD_REQUEST,
                               f"a password needs at least {P.MIN_PASSWORD} characters")
        self._spend(now)
        return P.EventData(hash=self.hasher.hash(password))

    def login(self, user: str, password: str, token: str, now: float,
              wall: float) -> P.EventData:
        owner = self.state.owner(user)
        if owner is None:
            raise RequestError(P.ERR_NO_ACCOUNT,
                               f"nobody has registered {user!r}: register first")
        if not self.verify(owner.data.hash, password, now):
            raise RequestError(P.ERR_UNAUTHORIZED, f"wrong password for {user}")
        return P.EventData(token=token_hash(token), expires=wall + self.session_ttl,
                           account=owner.id)

    def verify(self, stored: str, password: str, now: float) -> bool:
        m = _PARAMS.match(stored)
        if m is None or int(m[1]) > MAX_MEMORY_KIB or int(m[2]) > MAX_TIME_COST \
                or int(m[3]) > MAX_PARALLELISM:
            return False
        self._spend(now)
        try:
            return self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def _spend(self, now: float) -> None:
        if not self.budget.take(now):
            raise RequestError(P.ERR_UNAVAILABLE,
                               "too many password checks on this server right now; retry")

    # --- retries and outcomes -----------------------------------------------------------------
    def same_request(self, existing: P.Event, op: str, user: str, args: P.Args,
                     token: str | None, now: float, wall: float) -> None:
        """A request whose rid already made ``existing``: answered again only if it
        is the same request by the same person; RequestError otherwise."""
        taken = RequestError(P.ERR_BAD_REQUEST, "request id already used")
        if existing.user != user:
            raise RequestError(P.ERR_BAD_REQUEST, "request id already used by another user")
        if op == P.OP_REGISTER:
            if existing.kind != P.EV_ACCOUNT or not self.verify(existing.data.hash,
                                                                args.password, now):
                raise taken
        elif op in (P.OP_LOGIN, P.OP_LOGOUT):
            kind = P.EV_SESSION if op == P.OP_LOGIN else P.EV_LOGOUT
            if existing.kind != kind or existing.data.token != token_hash(token):
                raise taken
        else:
            self.authorize(user, token, wall)

    def outcome(self, event: P.Event, wall: float) -> None:
        """Before answering a register or a login: does it still hold now that its
        copies are made? A register that another server's (earlier in the total
        order) beat to the name has lost it; RequestError says so."""
        if event.kind == P.EV_ACCOUNT:
            owner = self.state.owner(event.user)
            if owner is None or owner.id != event.id:
                raise RequestError(P.ERR_NAME_TAKEN,
                                   f"the name {event.user!r} was registered at the same "
                                   f"time on another server, and that registration counts")
        elif event.kind == P.EV_SESSION:
            if self.state.session_of(event.data.token, event.user, wall) is None:
                raise RequestError(P.ERR_UNAUTHORIZED,
                                   f"the session is no longer valid: {event.user!r} has "
                                   f"another owner, or it was logged out")
