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

Where: the app and its endpoints are here (``create_app``); the middleware in front
of it (the limits, the CSRF and Origin checks, the security headers, the log line,
and the JSON-body posts answered without FastAPI) in ``web/guard.py``; the bodies
and how they are read in ``web/bodies.py``; the cookie in ``web/sessions.py``; JSON
answers and the errors' mapping in ``web/errors.py``; the live stream in
``web/stream.py``; the pages in ``web/pages.py``. ``Guard`` and ``MAX_STREAMS`` can
be imported from here too.
"""
from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

from clients.connection import ClientError
from common import protocol
from common.histogram import Histogram
from web.bodies import (Credentials, DmBody, LimitQuery, PostBody, ServerQuery, TargetBody,
                        fields_of, post_with_body)
from web.broker_link import BrokerLink
from web.errors import add_error_handlers, json_response
from web.guard import Guard  # noqa: F401 - web/gateway.py imports it from here
from web.pages import add_pages
from web.sessions import Refused, check_password, clear_session, session_of, set_session
from web.stream import MAX_STREAMS, add_stream  # noqa: F401 - MAX_STREAMS: the tests', from here

CONVERSATION_USERS = 200
"""``/api/conversations`` asks the chat with at most this many users (one request each)."""
CONVERSATION_FANOUT = 32
"""... at most this many at once."""


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

    app.state.plain_posts = {}            # path -> endpoint, answered by Guard (post_with_body)

    add_error_handlers(app, link)

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

    @post_with_body(app, "/api/register", Credentials, tags=["accounts"],
                    summary="Claim a name with a password, and sign in")
    async def register(request: Request):
        body = await fields_of(request, Credentials)
        user, password = body["user"], body["password"]
        link.build(protocol.OP_REGISTER, user, {"password": password})   # checks the name
        check_password(password)
        await link.request(protocol.OP_REGISTER, user, {"password": password})
        return await log_in(request, user, password, {"new": True})

    @post_with_body(app, "/api/login", Credentials, tags=["accounts"],
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
    @post_with_body(app, "/api/post", PostBody, tags=["posts"],
                    summary="Post for everyone who follows you")
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

    @post_with_body(app, "/api/follow", TargetBody, tags=["people"], summary="Follow a user")
    async def follow(request: Request):
        body = await fields_of(request, TargetBody)
        return json_response(await call(request, protocol.OP_FOLLOW, {"target": body["user"]}))

    @post_with_body(app, "/api/unfollow", TargetBody, tags=["people"], summary="Stop following a user")
    async def unfollow(request: Request):
        body = await fields_of(request, TargetBody)
        return json_response(await call(request, protocol.OP_UNFOLLOW, {"target": body["user"]}))

    @app.get("/api/following", tags=["people"], summary="The users you follow")
    async def following(request: Request, server: ServerQuery = None):
        return json_response(await call(request, protocol.OP_FOLLOWING, {}, server))

    @post_with_body(app, "/api/dm", DmBody, tags=["messages"], summary="Send a user a private message")
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

    add_stream(app, link, call)

    # --- pages ------------------------------------------------------------------------
    add_pages(app)

    return app
