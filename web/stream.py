"""``GET /api/stream``: Server-Sent Events of a user's new posts and messages, live.

One ``listen`` long poll after another (``LISTEN_WAIT`` each), every item sent as
``event: post`` or ``event: message``. The first ``listen`` (``wait`` 0) runs before
the response starts, so an invalid session is a plain 401; a failed one later is an
``event: problem`` and, but for an invalid session, another try ``STREAM_RETRY_S``
later. When the browser goes away the parked ``listen`` is sent again with ``wait``
0, so the server unparks it at once. A user may hold ``MAX_STREAMS`` open: that
count is the only thing the gateway keeps per user.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from clients.connection import ClientError
from common import protocol
from web.broker_link import BrokerLink
from web.sessions import session_of

LISTEN_WAIT = 10.0
"""Seconds one listen of ``/api/stream`` stays parked on a server before the next."""
STREAM_RETRY_S = 1.0
"""After a failed listen (no server), the stream asks again this much later."""
MAX_STREAMS = 8
"""Streams one user may have open at once (each parks a listen on a server)."""


def add_stream(app: FastAPI, link: BrokerLink,
               call: Callable[..., Awaitable[dict]]) -> None:
    """``GET /api/stream`` on ``app``; ``call`` is the app's request as the cookie's user."""
    open_streams: dict[str, int] = {}     # user -> streams open (MAX_STREAMS), nothing else kept

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
