"""``python -m servers.echo --id N``: a server that does nothing, for the benchmark's baseline.

It joins the broker's pool exactly as a real server does (a DEALER named
``server-N`` that says READY, then HEARTBEAT with phase ``serving`` every
``heartbeat_interval``) and answers every request at once with ok and an empty
result: no state, no storage, no replication, no log line per request. Timing
the same clients through the same broker against it gives the ceiling of our
own request path on this machine (``run_all.py bench``).
"""
from __future__ import annotations

import signal
import sys
import time

import typer
import zmq

from common import cli_options as O
from common import protocol as P
from common.clock import LamportClock, PhysicalClock
from common.config import Config, ConfigError, load_config

DRAIN = 1000
"""Requests read per loop turn before the heartbeat check."""


class EchoServer:
    def __init__(self, config: Config, server_id: int) -> None:
        self.id = server_id
        self.config = config
        self.lamport = LamportClock()
        self.clock = PhysicalClock()
        self.ctx = zmq.Context()
        self.ctx.linger = 0
        self.broker = self.ctx.socket(zmq.DEALER)
        self.broker.setsockopt(zmq.IDENTITY, f"server-{server_id}".encode())
        self.broker.sndhwm = self.broker.rcvhwm = 200_000
        self.broker.connect(config.endpoint(config.backend_port))
        self.heartbeat_at = 0.0
        self.running = True

    def run(self) -> None:
        self.to_broker(b"", P.READY, {"id": self.id})
        try:
            while self.running:
                wait = max(0.0, self.heartbeat_at - time.monotonic())
                if self.broker.poll(wait * 1000):
                    self.drain()
                self.send_heartbeats()
            self.to_broker(b"", P.LEAVE, {"id": self.id})
        finally:
            self.ctx.destroy(0)

    def drain(self) -> None:
        for _ in range(DRAIN):
            try:
                frames = P.recv(self.broker, zmq.NOBLOCK)
            except zmq.Again:
                return
            self.on_broker(frames)

    def on_broker(self, frames: list[bytes]) -> None:
        """A request (non-empty route) gets ok at once; the broker's heartbeats need nothing."""
        if len(frames) != 4 or not frames[0]:
            return
        try:
            msg = P.decode(frames[1:])
        except P.ProtocolError:
            return
        self.lamport.merge(msg.lamport)
        if msg.type == P.REQUEST:
            self.to_broker(frames[0], P.REPLY, {"rid": msg.body["rid"], "ok": True,
                                               "server": self.id, "time": self.clock.now(),
                                               "result": {}})

    def send_heartbeats(self) -> None:
        """Idempotent periodic job: tell the broker we are alive and serving."""
        now = time.monotonic()
        if now < self.heartbeat_at:
            return
        self.heartbeat_at = now + self.config.heartbeat_interval
        self.to_broker(b"", P.HEARTBEAT, {"id": self.id, "phase": "serving", "echo": True})

    def to_broker(self, route: bytes, msg_type: str, body: dict) -> None:
        try:
            P.send(self.broker, [route] + P.encode(msg_type, self.lamport.tick(), body),
                   zmq.NOBLOCK)
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
