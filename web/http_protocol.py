"""uvicorn's httptools protocol, with one write per answer instead of two.

uvicorn writes a response's status line and headers as soon as the application
sends ``http.response.start``, and its body at ``http.response.body``: two system
calls and, with TCP_NODELAY, two TCP segments for every JSON answer, and on the
loopback the sender's write also pays for the receiver's TCP work. ``OneWrite``
gathers what the protocol writes during one turn of the event loop and hands it to
the real transport in one write at the end of that turn, so a whole answer goes
out at once (a stream's events still go out as they are sent, one turn later).
"""
from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class OneWrite:
    """The connection's transport as the protocol sees it: writes are gathered and
    written together by a callback queued at the first of them; closing writes what
    is gathered first. Everything else is the transport's own."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._gathered: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._gathered:
            self._loop.call_soon(self._flush)
        self._gathered.append(data)

    def _flush(self) -> None:
        if self._gathered:
            data = b"".join(self._gathered)
            self._gathered.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class GatewayHttp(HttpToolsProtocol):
    """``HttpToolsProtocol`` on a ``OneWrite`` transport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneWrite(transport, self.loop))  # type: ignore[arg-type]
