"""JSON answers, and what an error becomes over HTTP.

Every error is a JSON ``{"error", "code"}`` answer, never a traceback: the code is
the protocol's or the gateway's own (``forbidden``, ``too_large``; FastAPI's
``not_found`` and ``method_not_allowed``), the status the one ``STATUS_CODES``
gives it, and a ``throttled`` answer carries ``Retry-After``. ``add_error_handlers``
registers the app's handler of each exception class, which ``Guard``
(``web/guard.py``) also calls for the posts it answers itself; an unexpected
exception is one line in ``logs/web.log`` and a 500.
"""
from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from clients.connection import ClientError
from common import protocol
from web.broker_link import BrokerLink
from web.sessions import COOKIE, Refused, clear_session

STATUS_CODES = {
    protocol.ERR_BAD_REQUEST: 400,
    protocol.ERR_UNAUTHORIZED: 401,
    "forbidden": 403,
    protocol.ERR_UNKNOWN_USER: 404,
    protocol.ERR_NO_ACCOUNT: 404,
    protocol.ERR_NO_SUCH_SERVER: 404,
    protocol.ERR_NAME_TAKEN: 409,
    "too_large": 413,
    protocol.ERR_THROTTLED: 429,
    protocol.ERR_INTERNAL: 500,
    protocol.ERR_UNAVAILABLE: 503,
}
"""HTTP status of each error code (the protocol's, and the gateway's own three)."""


def json_response(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(protocol.dumps(data), status_code=status, headers=headers,
                    media_type="application/json")


def error_response(code: str, message: str) -> Response:
    headers = None
    if code == protocol.ERR_THROTTLED and (m := re.search(r"try again in (\d+) s", message)):
        headers = {"Retry-After": m[1]}
    return json_response({"error": message, "code": code}, STATUS_CODES.get(code, 500), headers)



def _readable(exc: RequestValidationError) -> str:
    """FastAPI's first validation error, as a sentence: ``body.text: Field required``."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    return f"{where}: {first.get('msg', 'invalid')}"[:200]


def add_error_handlers(app: FastAPI, link: BrokerLink) -> None:
    """The app's handler of each exception an endpoint may raise (``Exception``'s last)."""
    @app.exception_handler(ClientError)
    async def client_error(_request, exc: ClientError):
        return error_response(exc.code, exc.message)

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        response = error_response(exc.code, exc.message)
        if exc.code == protocol.ERR_UNAUTHORIZED and COOKIE in request.cookies:
            clear_session(response, request)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        return error_response(protocol.ERR_BAD_REQUEST, _readable(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return json_response({"error": str(exc.detail), "code": code}, exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_request, exc: Exception):
        link.log.warn(f"error in the gateway: {type(exc).__name__}: {exc}")
        return error_response(protocol.ERR_INTERNAL, "internal error in the gateway (see logs/web.log)")
