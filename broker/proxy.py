"""A ZeroMQ proxy (``zmq.proxy_steerable``, in C) on a thread of its own, stoppable
through a PAIR socket: the broker's bus (``broker.Bus``) and its fast request path
(``broker/fast_path.py``) are each one."""
from __future__ import annotations

import errno
import threading

import zmq

from common import startup


def run_proxy(front: zmq.Socket, back: zmq.Socket, capture: zmq.Socket | None,
              control: zmq.Socket) -> int:
    """``zmq.proxy_steerable`` until told TERMINATE; returns how often it was re-entered.

    libzmq's proxy gives up on a passing EAGAIN (libzmq issue #1653: a socket polled
    readable whose receive then has nothing, as when a peer has just connected) or an
    EINTR, and returns; the sockets are fine, so it is simply entered again. Nothing is
    lost: it failed to receive, so it held no message. Any other error ends it."""
    restarts = 0
    while True:
        try:
            zmq.proxy_steerable(front, back, capture, control)
            return restarts
        except zmq.ZMQError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EINTR):
                raise
            restarts += 1


class ProxyThread:
    """Subclasses make their sockets, bound, in ``open_sockets`` (on the proxy's
    thread): ``(front, back, capture or None)``."""
    name = "proxy"

    def __init__(self, ctx: zmq.Context) -> None:
        self._ctx = ctx
        self._control_addr = f"inproc://{self.name}-control-{id(self)}"
        self._control = ctx.socket(zmq.PAIR)
        self._control.bind(self._control_addr)
        self._ready = threading.Event()
        self._error: Exception | None = None
        self.restarts = 0
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def open_sockets(self, made: list[zmq.Socket]) -> tuple:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5)
        if self._error:
            raise self._error

    def _run(self) -> None:
        made: list[zmq.Socket] = []       # every socket made, closed at the end
        try:
            front, back, capture = self.open_sockets(made)
            control = self._ctx.socket(zmq.PAIR)
            made.append(control)
            control.connect(self._control_addr)
        except (startup.CannotStart, zmq.ZMQError) as exc:
            self._error = exc
            self._ready.set()
            for sock in made:
                sock.close(0)
            return
        self._ready.set()
        try:
            self.restarts = run_proxy(front, back, capture, control)
        except zmq.ZMQError as exc:
            self._error = exc
        finally:
            for sock in made:
                sock.close(0)

    def problem(self) -> str | None:
        """Why the proxy stopped by itself, if it did (its thread logs nothing)."""
        if self._thread.is_alive() or self._error is None:
            return None
        return f"the {self.name} proxy stopped: {self._error}"

    def stop(self) -> None:
        try:
            self._control.send(b"TERMINATE")
        except zmq.ZMQError:
            pass
        self._thread.join(1.0)
        self._control.close(0)
