"""The HTTP phase's load generator (``clients/bench/http.py``): ``KeepAlive`` against a
small keep-alive HTTP/1.1 server in a thread (no cluster, no gateway)."""
from __future__ import annotations

import socketserver
import threading

import pytest

from clients.bench.http import KeepAlive


class Handler(socketserver.StreamRequestHandler):
    """Answers every POST on one connection; the third one with ``Connection: close``
    after which it closes (the client must open a new connection)."""

    def handle(self) -> None:
        served = 0
        while True:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                byte = self.rfile.read(1)
                if not byte:
                    return
                head += byte
            lines = head.decode("latin-1").split("\r\n")
            length = next(int(line.split(":", 1)[1]) for line in lines
                          if line.lower().startswith("content-length:"))
            body = self.rfile.read(length)
            self.server.seen.append((lines[0], dict(l.split(": ", 1) for l in lines[1:] if l), body))
            served += 1
            status = b"201 Created" if body == b'{"text": "created"}' else b"200 OK"
            answer = b'{"ok":true}'
            self.wfile.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                             b"content-length: " + str(len(answer)).encode() + b"\r\n\r\n" + answer)
            if served == 3:
                return                     # the server ends the connection


@pytest.fixture
def server():
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler) as srv:
        srv.daemon_threads = True
        srv.seen = []
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        yield srv
        srv.shutdown()


@pytest.mark.timeout(30)
def test_keepalive_sends_the_same_request_and_reads_each_status(server):
    port = server.server_address[1]
    client = KeepAlive(port, "/api/post", {"Cookie": "social_session=a.b", "X-Requested-With": "bench"},
                       b'{"text": "hi"}')
    client.connect()
    assert [client.post() for _ in range(3)] == [200, 200, 200]
    line, headers, body = server.seen[0]
    assert line == "POST /api/post HTTP/1.1" and body == b'{"text": "hi"}'
    assert headers["Cookie"] == "social_session=a.b" and headers["Content-Length"] == "14"
    assert headers["Host"] == f"127.0.0.1:{port}"
    client.close()


@pytest.mark.timeout(30)
def test_keepalive_opens_a_new_connection_after_the_server_closed_one(server):
    port = server.server_address[1]
    client = KeepAlive(port, "/api/post", {}, b'{"text": "created"}')
    statuses = []
    for _ in range(3):
        statuses.append(client.post())
    with pytest.raises(OSError):
        client.post()                      # the server closed after its third answer
    assert client.sock is None
    statuses.append(client.post())          # a new connection
    assert statuses == [201, 201, 201, 201]
    client.close()
