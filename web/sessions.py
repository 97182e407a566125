"""The session: a cookie ``social_session`` = ``USER.TOKEN``, read, set and cleared.

The token is the servers' own session token, of which they keep only the hash; the
gateway keeps no session table, so a restart logs nobody out. The cookie is
``HttpOnly`` (no script can read it), ``SameSite=Strict`` (no other site's page
sends it) and ``Secure`` when served over HTTPS. A request without a well-formed
cookie is ``Refused`` here, before any request goes to the broker; the app's
handler of ``Refused`` (``web/errors.py``) clears a cookie the servers refused.
"""
from __future__ import annotations

import re
import time

from fastapi import Request
from fastapi.responses import Response

from clients.connection import ClientError
from common import protocol

COOKIE = "social_session"
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43,128}$")


class Refused(Exception):
    """An HTTP request refused by the gateway itself (no session, no CSRF header)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def session_of(request: Request) -> tuple[str, str]:
    """(user, token) from the cookie; Refused(unauthorized) without a well-formed one."""
    user, _, token = request.cookies.get(COOKIE, "").partition(".")
    if not protocol.USER_RE.fullmatch(user) or not TOKEN_RE.fullmatch(token):
        raise Refused(protocol.ERR_UNAUTHORIZED, "not signed in: sign in first")
    return user, token


def set_session(response: Response, request: Request, user: str, token: str,
                expires: float) -> None:
    response.set_cookie(COOKIE, f"{user}.{token}", max_age=max(0, int(expires - time.time())),
                        httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")


def clear_session(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")


def check_password(password: str) -> None:
    if not protocol.MIN_PASSWORD <= len(password) <= protocol.MAX_PASSWORD:
        raise ClientError(protocol.ERR_BAD_REQUEST,
                          f"a password needs {protocol.MIN_PASSWORD} to "
                          f"{protocol.MAX_PASSWORD} characters")

