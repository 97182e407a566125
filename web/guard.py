"""``Guard``: the pure ASGI middleware in front of the whole gateway.

It refuses, before anything is parsed, a body above ``protocol.MAX_REQUEST_BYTES``
(413, chunked bodies read up to the limit first), a ``POST`` under ``/api`` without
``X-Requested-With`` (a cross-site form cannot set it, and a cross-site script
cannot without a CORS preflight, which this gateway never grants) and a request
whose ``Origin`` is not this host. It adds the security headers to every answer
(pages get a Content-Security-Policy allowing scripts from this origin only) and
writes one log line per API request. The JSON-body POSTs it answers itself
(``web/bodies.py``, ``post_with_body``).
"""
from __future__ import annotations

import time

from fastapi import FastAPI, Request

from common import protocol
from web.broker_link import BrokerLink
from web.errors import error_response

CSRF_HEADER = "x-requested-with"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
GUARDED_HEADERS = {b"content-length", b"origin", b"host", CSRF_HEADER.encode()}
"""The request headers ``Guard`` reads (ASGI servers give header names in lower case)."""
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY")]


class Guard:
    """Pure ASGI middleware in front of everything: the body limit, the CSRF header
    and the Origin check on ``/api``, security headers on every answer, one log line
    per request.

    The JSON-body POSTs (``app.state.plain_posts``: path -> endpoint) it answers
    itself, calling the endpoint and, for an exception, the app's handler of it:
    what FastAPI and Starlette would do, without the dozen layers of their
    per-request machinery (middleware, routing, dependency solving, pydantic),
    which cost a post more than everything else in this process's Python."""

    def __init__(self, app: FastAPI, link: BrokerLink) -> None:
        self.app = app
        self.link = link
        self.plain_posts: dict = app.state.plain_posts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began = time.monotonic()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k in GUARDED_HEADERS}
        method, path = scope["method"], scope["path"]
        status = {"code": 0}

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        refusal = self.refusal(method, path, headers)
        if refusal is None and "content-length" not in headers and method not in ("GET", "HEAD"):
            receive, refusal = await self.buffered(receive)       # chunked: read it all first
        if refusal is not None:
            await error_response(*refusal)(scope, receive, send_with_headers)
        elif method == "POST" and path in self.plain_posts:
            await self.answer(self.plain_posts[path], scope, receive, send_with_headers)
        else:
            await self.app(scope, receive, send_with_headers)
        if path.startswith("/api/") and path != "/api/stream":
            client = scope.get("client") or ("?", 0)
            self.link.log.recv(f"http:{client[0]}", f"{method} {path} -> {status['code']} "
                                                    f"({(time.monotonic() - began) * 1000:.1f} ms)")

    async def answer(self, endpoint, scope, receive, send) -> None:
        """``endpoint(request)``'s response, or that of the app's handler of its exception
        (the handler registered for the exception's nearest class)."""
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except Exception as exc:  # noqa: BLE001 - every class has a handler (Exception's last)
            handler = next(self.app.exception_handlers[cls] for cls in type(exc).__mro__
                           if cls in self.app.exception_handlers)
            response = await handler(request, exc)
        await response(scope, receive, send)

    @staticmethod
    def refusal(method: str, path: str, headers: dict) -> tuple[str, str] | None:
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > protocol.MAX_REQUEST_BYTES:
            return "too_large", f"a request body may have at most {protocol.MAX_REQUEST_BYTES} bytes"
        if not path.startswith("/api/"):
            return None
        origin = headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != headers.get("host"):
            return "forbidden", "cross-origin requests are refused"
        if method not in ("GET", "HEAD", "OPTIONS") and not headers.get(CSRF_HEADER):
            return "forbidden", "a state-changing request needs the header X-Requested-With"
        return None

    @staticmethod
    async def buffered(receive):
        """A body of unknown length (chunked) read whole, up to the limit: (a ``receive``
        that hands it over in one message, None), or (``receive``, the refusal)."""
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return receive, ("bad_request", "the client went away")
            body += message.get("body", b"")
            if len(body) > protocol.MAX_REQUEST_BYTES:
                return receive, ("too_large", f"a request body may have at most "
                                              f"{protocol.MAX_REQUEST_BYTES} bytes")
            if not message.get("more_body"):
                break
        handed = False

        async def replay():
            nonlocal handed
            if handed:
                return await receive()
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return replay, None
