"""``python -m clients.bench.echo --id N``: a server that does nothing, for the
benchmark's baseline.

It joins the broker's pool exactly as a real server does (a DEALER named
``server-N.<random>`` that says READY, then HEARTBEAT with phase ``serving`` every
``heartbeat_interval``) and answers every request at once with ok and an empty
result: no state, no storage, no replication, no log line per request. Timing
the same clients through the same broker against it gives the ceiling of our
own request path on this machine (``run_all.py bench``). Like a real server, it
connects with CURVE under its own key (``server-N``, made and admitted if missing),
so the baseline pays for the encryption too.
"""
from __future__ import annotations

import signal
import sys
import time

import typer
import zmq

from common import cli_options as O
from common import keys
from common import protocol as P
from common import sockets
from common.clock import LamportClock, PhysicalClock
from common.config import Config, ConfigError, load_config

class EchoServer:
    def __init__(self, config: Config, server_id: int) -> None:
        self.id = server_id
        self.config = config
        self.lamport = LamportClock()
        self.clock = PhysicalClock()
        self.ctx = zmq.Context()
        self.ctx.linger = 0
        self.security = keys.Security(self.ctx, config.data_dir, keys.server_name(server_id),
                                      server_id)
        sock = self.security.client(sockets.tune(self.ctx.socket(zmq.DEALER), config))
        sock.setsockopt(zmq.IDENTITY, keys.dealer_identity(server_id))
        sock.sndhwm = sock.rcvhwm = config.hwm
        sock.connect(config.endpoint(config.backend_port))
        self.broker = P.Endpoint(sock, P.BROKER_TO_SERVER, self.lamport)
        fast = self.security.client(sockets.tune(self.ctx.socket(zmq.DEALER), config))
        fast.sndhwm = fast.rcvhwm = config.client_hwm
        fast.connect(config.endpoint(config.fast_backend_port))   # the broker's proxy
        self.fast = P.Endpoint(fast, P.BROKER_TO_SERVER, self.lamport)
        self.poller = zmq.Poller()
        for endpoint in (self.broker, self.fast):
            self.poller.register(endpoint.sock, zmq.POLLIN)
        self.heartbeat_at = 0.0
        self.running = True

    def run(self) -> None:
        self.to_broker(b"", P.Ready(id=self.id))
        try:
            while self.running:
                wait = max(0.0, self.heartbeat_at - time.monotonic())
                for sock, _ in self.poller.poll(sockets.poll_ms(wait)):
                    self.drain(self.broker if sock is self.broker.sock else self.fast)
                self.send_heartbeats()
            self.to_broker(b"", P.Leave(id=self.id))
        finally:
            self.security.stop()
            self.ctx.destroy(0)

    def drain(self, endpoint: P.Endpoint) -> None:
        for _ in range(self.config.drain):
            try:
                frames = P.recv(endpoint.sock, zmq.NOBLOCK)
            except zmq.Again:
                return
            self.on_request(endpoint, frames)

    def on_request(self, endpoint: P.Endpoint, frames: list[bytes]) -> None:
        """A request (non-empty route) gets ok at once, on the socket it came by; the
        broker's heartbeats need nothing."""
        try:
            incoming = endpoint.receive(frames)
        except P.ProtocolError:
            return
        route = incoming.envelope[0]
        if route and isinstance(incoming.msg, P.Request):
            self.send(endpoint, route, P.Reply(rid=incoming.msg.rid, ok=True, server=self.id,
                                               time=self.clock.now(), result={}))

    def send_heartbeats(self) -> None:
        """Idempotent periodic job: tell the broker we are alive and serving."""
        now = time.monotonic()
        if now < self.heartbeat_at:
            return
        self.heartbeat_at = now + self.config.heartbeat_interval
        self.to_broker(b"", P.Heartbeat(id=self.id, status=P.ServerStatus(
            id=self.id, phase="serving", events=0, digest="", lamport=self.lamport.value, vv={},
            coordinator=None, epoch=0, clock_offset_ms=None, clock_skew_ms=0.0, last_sync=None,
            under_replicated=0, repl_lag_hist=[], peers=[])))

    def to_broker(self, route: bytes, msg) -> None:
        self.send(self.broker, route, msg)

    def send(self, endpoint: P.Endpoint, route: bytes, msg) -> None:
        try:
            endpoint.send(msg, route, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass                    # broker gone or queue full: the client retries or times out

    def stop(self, *_args) -> None:
        self.running = False


app = typer.Typer(add_completion=False, help="Run an echo server (benchmark baseline).")


@app.command()
def main(server_id: int = typer.Option(..., "--id", min=1, max=99, help="This server's id (1-99)."),
         port_base: O.OptInt = O.PortBase, host: O.OptStr = O.Host,
         data_dir: O.OptStr = O.DataDir, log_dir: O.OptStr = O.LogDir) -> None:
    try:
        config = load_config(port_base=port_base, host=host, data_dir=data_dir, log_dir=log_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(1)
    server = EchoServer(config, server_id)
    signal.signal(signal.SIGTERM, server.stop)
    signal.signal(signal.SIGINT, server.stop)
    server.run()


if __name__ == "__main__":
    app()
