"""One command run on behalf of one user: clocks, saved state, log, connection.

A session loads the user's state (their Lamport clock, clock correction and
session token), opens the process log and the connection, and on close saves the
state again -- also after an error, so the Lamport clock never goes backwards.

Every request but ``register``, ``login`` and ``status`` carries the saved token.
With a password at hand (``SOCIAL_PASSWORD``, for scripts and bots), a command
with no valid token logs in by itself first -- registering a name nobody owns --
and logs in again once if the servers refuse the token (expired or logged out).
"""
from __future__ import annotations

import time

from common import protocol
from common.clock import LamportClock, PhysicalClock
from common.config import Config
from common.log import ProcessLog

from clients.connection import ClientError, Connection
from clients.user_state import UserState

ANONYMOUS_PROCESS = "client-status"
"""The process (and log) name of a command run without --user."""


class UserSession:
    def __init__(self, config: Config, user: str | None, clock_offset: float = 0.0,
                 clock_chaos: bool = False, password: str | None = None) -> None:
        if user is not None:
            _check_user(user)
        self.user = user
        self.password = password or None
        self.state = UserState.load(config.client_state_file(user)) if user else None
        learned = self.state.clock_offset if self.state else 0.0
        self.lamport = LamportClock(self.state.lamport if self.state else 0)
        self.clock = PhysicalClock(offset=clock_offset + learned, chaos=clock_chaos)
        process = f"client-{user}" if user else ANONYMOUS_PROCESS
        self.log = ProcessLog(process, config.log_file(process), self.lamport, self.clock,
                              plain=True)   # a command writes a few lines: no loguru
        self.connection = Connection(config, user, self.lamport, self.clock, self.log)
        self._pipelines: list = []

    def __enter__(self) -> "UserSession":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def call(self, op: str, args: dict, server: int | None = None) -> dict:
        """Run ``op`` with the user's session; log in first if a password is at hand
        and no valid token is saved.

        The request is validated before logging in, so bad input changes
        nothing; ``status`` is the broker's and needs no one.
        """
        if self.user is None and op not in protocol.BROKER_OPS:
            raise ClientError(protocol.ERR_BAD_REQUEST,
                              f"{op} needs a user: pass --user NAME or set SOCIAL_USER")
        if op in protocol.BROKER_OPS:
            return self.connection.request(op, args, server)
        self.connection.build(op, args, server, token=_SAMPLE_TOKEN)
        logged_in_now = self.ensure_session()
        try:
            return self.connection.request(op, args, server)
        except ClientError as exc:
            if exc.code != protocol.ERR_UNAUTHORIZED or not self.password or logged_in_now:
                raise
        self.state.token = None                  # refused: expired or logged out elsewhere
        self.login(self.password)
        return self.connection.request(op, args, server)

    def pipeline(self, window: int = 32):
        """A Pipeline (``clients/pipeline.py``) of this user: up to ``window`` requests in
        flight, with this session's token, Lamport clock and log; close it after use."""
        import zmq
        from clients.pipeline import Pipeline
        self.ensure_session()
        problem = self.connection.find_broker_key()
        if problem is not None:
            raise ClientError(protocol.ERR_UNAVAILABLE, str(problem))
        ctx = zmq.Context()
        ctx.linger = 0
        pipe = Pipeline(ctx, self.connection.config, self.user, self.connection.broker_key,
                        window=window, token=self.connection.token, lamport=self.lamport,
                        log=self.log)
        self._pipelines.append((ctx, pipe))
        return pipe

    def ensure_session(self) -> bool:
        """Use the saved token; or, with a password, log in (registering the name
        if nobody owns it). True if it logged in now."""
        token = self.state.session(time.time())
        if token is not None:
            self.connection.token = token
            return False
        if not self.password:
            return False                         # the servers will say: log in first
        try:
            self.login(self.password)
        except ClientError as exc:
            if exc.code != protocol.ERR_NO_ACCOUNT:
                raise
            self.register(self.password)
            self.login(self.password)
        return True

    def register(self, password: str) -> dict:
        """Claim the user's name with ``password`` (the servers keep its argon2id hash)."""
        _check_password(password)
        return self.connection.request(protocol.OP_REGISTER, {"password": password})

    def login(self, password: str) -> dict:
        """A new session: a fresh 256-bit token, saved once the servers hold its hash."""
        import secrets           # here: most commands never log in
        token = secrets.token_urlsafe(32)
        result = self.connection.request(protocol.OP_LOGIN, {"password": password},
                                         token=token)
        self.state.token, self.state.expires = token, float(result["expires"])
        self.connection.token = token
        return result

    def logout(self) -> dict:
        """Revoke the saved token on every server; forgotten here whatever the answer."""
        token = self.state.token
        self.state.token, self.state.expires = None, 0.0
        if token is None:
            raise ClientError(protocol.ERR_UNAUTHORIZED, f"{self.user} is not logged in")
        return self.connection.request(protocol.OP_LOGOUT, {}, token=token)

    def close(self) -> None:
        for ctx, pipe in self._pipelines:
            pipe.close()
            ctx.destroy(0)
        if self.state is not None:
            self.state.lamport = self.lamport.value
            self.state.clock_offset += self.connection.clock_correction
            self.state.save()
        self.connection.close()
        self.log.close()


_SAMPLE_TOKEN = "x" * 43
"""Stands for the token while a request is validated before logging in."""


def _check_password(password: str) -> None:
    if not protocol.MIN_PASSWORD <= len(password) <= protocol.MAX_PASSWORD:
        raise ClientError(protocol.ERR_BAD_REQUEST,
                          f"a password needs {protocol.MIN_PASSWORD} to "
                          f"{protocol.MAX_PASSWORD} characters")


def _check_user(user: str) -> None:
    """Before the name becomes part of a file path."""
    try:
        protocol.check_user_name(user, "--user")
    except protocol.ProtocolError as exc:
        raise ClientError(protocol.ERR_BAD_REQUEST, str(exc)) from None
