"""The HTTP API under ``/api`` and the pages, as one FastAPI application.

Every endpoint is one (or, for ``register``, two) requests to the broker through
``web/broker_link.py``; nothing is stored here. Inputs are checked by the very
code that checks them on the wire (``protocol.request``), so the limits are the
protocol's and the messages the CLI's.

Safety:

* The session is a cookie ``social_session`` = ``USER.TOKEN`` (the servers' own
  session token, of which they keep only the hash), ``HttpOnly`` (no script can
  read it), ``SameSite=Strict`` (no other site's page sends it), ``Secure`` when
  served over HTTPS. The gateway keeps no session table: a restart logs nobody out.
* Every state-changing call (``POST``) must carry ``X-Requested-With`` (any
  value): a cross-site form cannot set it, and a cross-site script cannot without
  a CORS preflight, which this gateway never grants. A request whose ``Origin`` is
  not this host is refused too.
* Bodies above ``protocol.MAX_REQUEST_BYTES`` are refused (413) before parsing;
  errors are JSON ``{"error", "code"}``, never a traceback.
* Pages get a Content-Security-Policy allowing scripts from this origin only.
"""
from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Annotated

import msgspec
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from clients.connection import ClientError
from common import protocol
from common.histogram import Histogram
from web.broker_link import BrokerLink

STATIC = Path(__file__).parent / "static"
COOKIE = "social_session"
CSRF_HEADER = "x-requested-with"
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43,128}$")
LISTEN_WAIT = 10.0
"""Seconds one listen of ``/api/stream`` stays parked on a server before the next."""
STREAM_RETRY_S = 1.0
"""After a failed listen (no server), the stream asks again this much later."""
MAX_STREAMS = 8
"""Streams one user may have open at once (each parks a listen on a server)."""
CONVERSATION_USERS = 200
"""``/api/conversations`` asks the chat with at most this many users (one request each)."""
CONVERSATION_FANOUT = 32
"""... at most this many at once."""

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

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
GUARDED_HEADERS = {b"content-length", b"origin", b"host", CSRF_HEADER.encode()}
"""The request headers ``Guard`` reads (ASGI servers give header names in lower case)."""
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY")]


# --- bodies -------------------------------------------------------------------------
class Body(BaseModel):
    """A JSON body of string fields, all required: unknown fields are refused, as on the
    wire (``forbid_unknown_fields``); the values are checked by ``protocol.request``.

    The model is the body's documentation (the OpenAPI page); ``fields_of`` reads a
    request's body against it without pydantic, with pydantic's messages."""
    model_config = ConfigDict(extra="forbid", strict=True)


class Credentials(Body):
    user: str
    password: str


class PostBody(Body):
    text: str


class TargetBody(Body):
    user: str


class DmBody(Body):
    to: str
    text: str


NOT_AN_OBJECT = "body: Input should be a valid dictionary or object to extract fields from"


async def fields_of(request: Request, model: type[Body]) -> dict[str, str]:
    """The request's JSON body, checked against ``model`` (every field present and a
    string, no other): ClientError(bad_request) naming the first problem, missing and
    mistyped fields first, in the model's order, then unknown ones."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if not (media_type == "application/json" or
            (media_type.startswith("application/") and media_type.endswith("+json"))):
        raise ClientError(protocol.ERR_BAD_REQUEST, NOT_AN_OBJECT)
    raw = await request.body()
    if not raw:
        raise ClientError(protocol.ERR_BAD_REQUEST, "body: Field required")
    try:
        data = protocol.loads(raw)
    except msgspec.DecodeError:
        raise ClientError(protocol.ERR_BAD_REQUEST, "body: JSON decode error") from None
    if not isinstance(data, dict):
        raise ClientError(protocol.ERR_BAD_REQUEST, NOT_AN_OBJECT)
    for name in model.model_fields:
        if name not in data:
            raise ClientError(protocol.ERR_BAD_REQUEST, f"{name}: Field required")
        if not isinstance(data[name], str):
            raise ClientError(protocol.ERR_BAD_REQUEST, f"{name}: Input should be a valid string")
    for name in data:
        if name not in model.model_fields:
            raise ClientError(protocol.ERR_BAD_REQUEST,
                              f"{name[:40]}: Extra inputs are not permitted")
    return data


def documented_body(model: type[Body]) -> dict:
    """``openapi_extra`` of a route whose endpoint reads ``model`` with ``fields_of``."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


ServerQuery = Annotated[int | None, Query(description="Ask this server only (1-99).")]
LimitQuery = Annotated[int, Query(description=f"1 to {protocol.MAX_LIMIT}.")]


# --- errors and JSON ------------------------------------------------------------------
def json_response(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(protocol.dumps(data), status_code=status, headers=headers,
                    media_type="application/json")


def error_response(code: str, message: str) -> Response:
    headers = None
    if code == protocol.ERR_THROTTLED and (m := re.search(r"try again in (\d+) s", message)):
        headers = {"Retry-After": m[1]}
    return json_response({"error": message, "code": code}, STATUS_CODES.get(code, 500), headers)


class Refused(Exception):
    """An HTTP request refused by the gateway itself (no session, no CSRF header)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _readable(exc: RequestValidationError) -> str:
    """FastAPI's first validation error, as a sentence: ``body.text: Field required``."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    return f"{where}: {first.get('msg', 'invalid')}"[:200]


# --- sessions -------------------------------------------------------------------------
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


# --- middleware ---------------------------------------------------------------------
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


# --- the application ------------------------------------------------------------------
def create_app(link: BrokerLink) -> FastAPI:
    app = FastAPI(title="Social network gateway", version="1",
                  description="The social network over HTTP. Sign in with POST /api/login "
                              "(a cookie holds the session); every POST needs the header "
                              "X-Requested-With. Errors are JSON {error, code}.",
                  docs_url=None, redoc_url=None, openapi_url="/api/openapi.json",
                  # no OpenTelemetry here: FastAPI's check for it read the environment
                  # on every request
                  telemetry={"tracing": False, "metrics": False, "logs": False})

    open_streams: dict[str, int] = {}     # user -> streams open (MAX_STREAMS), nothing else kept
    app.state.plain_posts = {}            # path -> endpoint, answered by Guard (post_with_body)

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

    async def call(request: Request, op: str, args: dict, server: int | None = None) -> dict:
        """``op`` as the cookie's user; a refused token clears the cookie."""
        user, token = session_of(request)
        try:
            return await link.request(op, user, args, token, server)
        except ClientError as exc:
            if exc.code == protocol.ERR_UNAUTHORIZED:
                raise Refused(exc.code, exc.message) from None
            raise

    # --- accounts ---------------------------------------------------------------------
    async def log_in(request: Request, user: str, password: str, extra: dict) -> Response:
        import secrets
        token = secrets.token_urlsafe(32)
        result = await link.request(protocol.OP_LOGIN, user, {"password": password}, token)
        body = {**extra, "user": user, "expires": result.get("expires")}
        response = json_response(body)
        set_session(response, request, user, token, float(result.get("expires") or 0))
        return response

    def post_with_body(path: str, model: type[Body], **doc):
        """``@app.post(path)`` for an endpoint ``f(request)`` that reads a ``model`` body
        with ``fields_of``. FastAPI documents it (OpenAPI) and would answer it, but
        ``Guard`` answers it first (``app.state.plain_posts``): FastAPI's per-request
        machinery cost ~60 of the ~90 µs a post took in-process, and four times that
        in a loaded gateway."""
        def register(endpoint):
            app.post(path, openapi_extra=documented_body(model), **doc)(endpoint)
            app.state.plain_posts[path] = endpoint
            return endpoint
        return register

    @post_with_body("/api/register", Credentials, tags=["accounts"],
                    summary="Claim a name with a password, and sign in")
    async def register(request: Request):
        body = await fields_of(request, Credentials)
        user, password = body["user"], body["password"]
        link.build(protocol.OP_REGISTER, user, {"password": password})   # checks the name
        check_password(password)
        await link.request(protocol.OP_REGISTER, user, {"password": password})
        return await log_in(request, user, password, {"new": True})

    @post_with_body("/api/login", Credentials, tags=["accounts"],
                    summary="Sign in (sets the session cookie)")
    async def login(request: Request):
        body = await fields_of(request, Credentials)
        return await log_in(request, body["user"], body["password"], {})

    @app.post("/api/logout", tags=["accounts"], summary="Sign out on every server")
    async def logout(request: Request):
        user, token = session_of(request)
        try:
            await link.request(protocol.OP_LOGOUT, user, {}, token)
        except ClientError as exc:
            if exc.code != protocol.ERR_UNAUTHORIZED:      # already invalid: signed out anyway
                raise
        response = json_response({"user": user, "signed_out": True})
        clear_session(response, request)
        return response

    @app.get("/api/me", tags=["accounts"], summary="Who is signed in, and whom they follow")
    async def me(request: Request):
        result = await call(request, protocol.OP_FOLLOWING, {})
        return json_response({"user": result["user"], "following": result.get("following", []),
                              "total": result.get("total")})

    # --- the network ------------------------------------------------------------------
    @post_with_body("/api/post", PostBody, tags=["posts"], summary="Post for everyone who follows you")
    async def post(request: Request):
        body = await fields_of(request, PostBody)
        return json_response(await call(request, protocol.OP_POST, {"text": body["text"]}))

    @app.get("/api/feed", tags=["posts"], summary="The newest posts, followed users first")
    async def feed(request: Request, limit: LimitQuery = protocol.DEFAULT_LIMIT,
                   server: ServerQuery = None):
        return json_response(await call(request, protocol.OP_FEED, {"limit": limit}, server))

    @app.get("/api/users", tags=["people"], summary="Everyone who has used the network")
    async def users(request: Request, server: ServerQuery = None):
        return json_response(await call(request, protocol.OP_USERS, {}, server))

    @post_with_body("/api/follow", TargetBody, tags=["people"], summary="Follow a user")
    async def follow(request: Request):
        body = await fields_of(request, TargetBody)
        return json_response(await call(request, protocol.OP_FOLLOW, {"target": body["user"]}))

    @post_with_body("/api/unfollow", TargetBody, tags=["people"], summary="Stop following a user")
    async def unfollow(request: Request):
        body = await fields_of(request, TargetBody)
        return json_response(await call(request, protocol.OP_UNFOLLOW, {"target": body["user"]}))

    @app.get("/api/following", tags=["people"], summary="The users you follow")
    async def following(request: Request, server: ServerQuery = None):
        return json_response(await call(request, protocol.OP_FOLLOWING, {}, server))

    @post_with_body("/api/dm", DmBody, tags=["messages"], summary="Send a user a private message")
    async def dm(request: Request):
        body = await fields_of(request, DmBody)
        return json_response(await call(request, protocol.OP_DM,
                                        {"to": body["to"], "text": body["text"]}))

    @app.get("/api/chat", tags=["messages"], summary="Your messages with a user, oldest first")
    async def chat(request: Request, with_: Annotated[str, Query(alias="with")],
                   limit: LimitQuery = 50, server: ServerQuery = None):
        return json_response(await call(request, protocol.OP_CHAT,
                                        {"with": with_, "limit": limit}, server))

    @app.get("/api/conversations", tags=["messages"],
             summary=f"Everyone you have messages with, the latest first (of the first "
                     f"{CONVERSATION_USERS} users)")
    async def conversations(request: Request):
        user, _ = session_of(request)
        names = [n for n in (await call(request, protocol.OP_USERS, {}))["users"] if n != user]
        gate = asyncio.Semaphore(CONVERSATION_FANOUT)

        async def last_with(name: str):
            async with gate:
                result = await call(request, protocol.OP_CHAT, {"with": name, "limit": 1})
            messages = result.get("messages", [])
            return {"with": name, "last": messages[-1]} if messages else None
        found = [c for c in await asyncio.gather(*map(last_with, names[:CONVERSATION_USERS])) if c]
        found.sort(key=lambda c: c["last"].get("lamport", 0), reverse=True)
        return json_response({"user": user, "conversations": found,
                              "complete": len(names) <= CONVERSATION_USERS})

    @app.post("/api/notifications", tags=["posts"],
              summary="New posts from the users you follow since you last asked (marks them shown)")
    async def notifications(request: Request, server: ServerQuery = None):
        return json_response(await call(request, protocol.OP_NOTIFICATIONS, {}, server))

    @app.get("/api/status", tags=["cluster"], summary="The servers as the broker sees them")
    async def status():
        result = await link.request(protocol.OP_STATUS, None, {})
        for row in result.get("servers", []):
            hist = Histogram.parse(row.get("repl_lag_hist"))
            if hist is not None and hist.total:
                row["repl_lag_p50_ms"] = hist.percentile(50)
                row["repl_lag_p99_ms"] = hist.percentile(99)
            row.pop("sums", None)
        result["gateway"] = {"lamport": link.lamport.value, "requests": link.requests,
                             "retries": link.retries, "time": link.clock.now()}
        return json_response(result)

    @app.get("/api/stream", tags=["posts"],
             summary="Server-Sent Events: posts of the users you follow (event: post) and "
                     "messages to you (event: message), live")
    async def stream(request: Request):
        user, token = session_of(request)
        if open_streams.get(user, 0) >= MAX_STREAMS:
            raise ClientError(protocol.ERR_THROTTLED, f"{user} has {MAX_STREAMS} streams open "
                                                      f"already: close one, and try again in 1 s")
        first = await call(request, protocol.OP_LISTEN, {"wait": 0.0, "since": 0})
        return StreamingResponse(events(request, user, token, first), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def events(request: Request, user: str, token: str, first: dict):
        open_streams[user] = open_streams.get(user, 0) + 1
        link.log.note(f"stream of {user} opened ({open_streams[user]} open)")
        yield f"retry: 2000\nevent: ready\ndata: {protocol.dumps({'user': user}).decode()}\n\n"
        result = first
        try:
            while True:
                for item in result.get("items", []):
                    kind = item.get("type") if item.get("type") in ("post", "message") else "item"
                    yield f"event: {kind}\ndata: {protocol.dumps(item).decode()}\n\n"
                if await request.is_disconnected():
                    return
                yield ": waiting\n\n"
                body = link.build(protocol.OP_LISTEN, user, {"wait": LISTEN_WAIT, "since": 0}, token)
                try:
                    result = await link.exchange(body)
                except asyncio.CancelledError:
                    link.send_nowait(protocol.with_args(body, wait=0.0))   # unpark it on the server
                    raise
                except ClientError as exc:
                    yield (f"event: problem\ndata: "
                           f"{protocol.dumps({'error': exc.message, 'code': exc.code}).decode()}\n\n")
                    if exc.code == protocol.ERR_UNAUTHORIZED:
                        return
                    result = {}
                    await asyncio.sleep(STREAM_RETRY_S)
        finally:
            open_streams[user] -= 1
            if not open_streams[user]:
                del open_streams[user]
            link.log.note(f"stream of {user} closed")

    # --- pages ------------------------------------------------------------------------
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return FileResponse(STATIC / "docs.html", headers={"Cache-Control": "no-cache"})

    return app
