"""What the client unit tests (tests/test_client_unit.py, tests/test_client_cli_unit.py)
share: a fake broker and the fixtures that start it and connect to it.

The broker here is a fake: a ROUTER on a free port, served by a background
thread that decodes each request as the broker's frontend does
(``protocol.CLIENT_TO_BROKER``) and answers with whatever the test scripts, as
real frames (``protocol.encode``).
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import pytest
import zmq

from clients.connection import Connection
from common import protocol
from common.clock import LamportClock, PhysicalClock
from common.config import Config


Frames = list[bytes]
Script = Callable[[protocol.Incoming, int], list[Frames]]
"""Given the n-th request (from 0), the frames to send back (maybe none)."""


def reply(rid: str, result: dict | None = None, *, lamport: int = 1, server: int | None = 1,
          at: float | None = None, code: str | None = None, error: str | None = None) -> Frames:
    """A REP as a broker sends it: a success with ``result``, or an error with ``code``."""
    when = time.time() if at is None else at
    if code is None:
        msg = protocol.Reply(rid=rid, ok=True, server=server, time=when,
                             result=result if result is not None else {})
    else:
        msg = protocol.Reply(rid=rid, ok=False, server=server, time=when, code=code,
                             error=error or code)
    protocol.validate(msg)
    return protocol.encode(msg, lamport)


class FakeBroker:
    """A ROUTER that answers requests by a script; its thread owns the socket."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[protocol.Incoming] = []
        self.port = 0
        self.public, self.secret = zmq.curve_keypair()
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(5), "fake broker did not start"

    def _serve(self) -> None:
        context = zmq.Context()
        socket = context.socket(zmq.ROUTER)
        socket.linger = 0
        socket.curve_publickey, socket.curve_secretkey = self.public, self.secret
        socket.curve_server = True          # stonehouse, as the broker's frontend
        self.port = socket.bind_to_random_port("tcp://127.0.0.1", 20000, 60000)
        self._ready.set()
        while not self._stopping.is_set():
            if not socket.poll(20):
                continue
            message = protocol.decode(socket.recv_multipart(), protocol.CLIENT_TO_BROKER)
            self.requests.append(message)
            for answer in self.script(message, len(self.requests) - 1):
                socket.send_multipart([*message.envelope, *answer])
        socket.close(linger=0)
        context.term()

    @property
    def ops(self) -> list[str]:
        return [message.msg.op for message in self.requests]

    @property
    def rids(self) -> set[str]:
        return {message.msg.rid for message in self.requests}

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)


@pytest.fixture
def start_broker(monkeypatch):
    brokers: list[FakeBroker] = []

    def start(script: Script) -> FakeBroker:
        brokers.append(FakeBroker(script))
        # the CLI finds a remote broker's key here (no key folder in these tests)
        monkeypatch.setenv("SOCIAL_BROKER_KEY", brokers[-1].public.decode())
        return brokers[-1]

    yield start
    for broker in brokers:
        broker.stop()


def ok_to_everything(message: protocol.Incoming, n: int) -> list[Frames]:
    return [reply(message.msg.rid, {"echo": message.msg.op})]


def connect(broker: FakeBroker, tmp_path, lamport: LamportClock | None = None,
            clock: PhysicalClock | None = None, **timing) -> Connection:
    config = Config(port_base=broker.port, data_dir=str(tmp_path / "data"),
                    log_dir=str(tmp_path / "logs"),
                    **({"request_timeout": 0.3, "request_deadline": 5.0} | timing)).validate()
    return Connection(config, "alice", lamport or LamportClock(), clock or PhysicalClock(),
                      broker_key=broker.public)


@pytest.fixture
def connection_to(tmp_path):
    connections: list[Connection] = []

    def open_connection(broker: FakeBroker, **kwargs) -> Connection:
        connections.append(connect(broker, tmp_path, **kwargs))
        return connections[-1]

    yield open_connection
    for connection in connections:
        connection.close()
