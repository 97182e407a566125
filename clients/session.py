"""One command run on behalf of one user: clocks, saved state, log, connection.

A session loads the user's state (their Lamport clock and clock correction),
opens the process log and the connection, and on close saves the state again
-- also after an error, so the Lamport clock never goes backwards.
"""
from __future__ import annotations

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
                 clock_chaos: bool = False) -> None:
        if user is not None:
            _check_user(user)
        self.user = user
        self.state = UserState.load(config.client_state_path(user)) if user else None
        learned = self.state.clock_offset if self.state else 0.0
        self.lamport = LamportClock(self.state.lamport if self.state else 0)
        self.clock = PhysicalClock(offset=clock_offset + learned, chaos=clock_chaos)
        process = f"client-{user}" if user else ANONYMOUS_PROCESS
        self.log = ProcessLog(process, config.log_path(process), self.lamport, self.clock)
        self.connection = Connection(config, user, self.lamport, self.clock, self.log)

    def __enter__(self) -> "UserSession":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def call(self, op: str, args: dict, server: int | None = None) -> dict:
        """Run ``op``; a user's first command registers them first.

        The request is validated before registering, so bad input changes
        nothing; ``status`` is the broker's and registers no one.
        """
        if self.user is None and op not in protocol.BROKER_OPS:
            raise ClientError(protocol.ERR_BAD_REQUEST,
                              f"{op} needs a user: pass --user NAME or set SOCIAL_USER")
        self.connection.build(op, args, server)
        if self._needs_registration(op):
            self.connection.request(protocol.OP_REGISTER, {})
            self.state.registered = True
        return self.connection.request(op, args, server)

    def _needs_registration(self, op: str) -> bool:
        return (self.state is not None and not self.state.registered
                and op not in protocol.BROKER_OPS)

    def close(self) -> None:
        if self.state is not None:
            self.state.lamport = self.lamport.value
            self.state.clock_offset += self.connection.clock_correction
            self.state.save()
        self.connection.close()
        self.log.close()


def _check_user(user: str) -> None:
    """Before the name becomes part of a file path."""
    try:
        protocol.check_user_name(user, "--user")
    except protocol.ProtocolError as exc:
        raise ClientError(protocol.ERR_BAD_REQUEST, str(exc)) from None
