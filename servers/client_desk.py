"""The server's desk for client requests: check them, answer reads, turn writes
into events, park listens, and answer each write once enough servers hold it.

It uses the server's sockets and state through ``server`` (one owner: the
server's loop calls it); what each operation means is in ``requests.py``.
"""
from __future__ import annotations

import time

from common import protocol as P
from common.log import brief, client_peer
from servers.listeners import Listeners
from servers.peers import SERVING
from servers.requests import ClientRequests, RequestError


class ClientDesk:
    def __init__(self, server, requests: ClientRequests, listeners: Listeners) -> None:
        self.server = server
        self.requests = requests
        self.listeners = listeners

    def reply(self, route: bytes, rid: str, result: dict | None = None,
              code: str | None = None, error: str | None = None) -> None:
        server = self.server
        body = {"rid": rid, "ok": code is None, "server": server.id, "time": server.clock.now()}
        if code is None:
            body["result"] = result
        else:
            body["code"], body["error"] = code, error
        server.to_broker(route, P.REPLY, body)
        what = f"ok replicas={result.get('replicas')}" if code is None else f"{code}: {error}"
        server.log.send(client_peer(route), f"reply rid={rid} {what}")

    def on_request(self, route: bytes, body: dict) -> None:
        """A client's REQ from the broker: validate, then read or write."""
        server = self.server
        rid = body.get("rid", "?")
        try:
            P.check_request(body)
        except P.ProtocolError as exc:
            server.log.recv(client_peer(route), f"bad request rid={rid}: {exc}")
            self.reply(route, str(rid)[:64], code=P.ERR_BAD_REQUEST, error=str(exc))
            return
        op, user, args = body["op"], body["user"], body["args"]
        server.log.recv(user, f"{op} rid={rid} {brief(args)}")
        try:
            if server.phase != SERVING:
                raise RequestError(P.ERR_UNAVAILABLE, f"{server.name} is {server.phase}")
            if op in P.READ_OPS:
                self.reply(route, rid, self.requests.read(op, user, args))
            else:
                self.on_write(route, rid, op, user, args)
        except RequestError as exc:
            self.reply(route, rid, code=exc.code, error=str(exc))

    def on_write(self, route: bytes, rid: str, op: str, user: str, args: dict,
                 listen_until: float | None = None) -> None:
        """Make the event of a write (or find it, for a retry) and wait for its copies."""
        server = self.server
        existing = server.state.events.get(rid)
        if existing is not None:                 # a retry: applied once, answered again
            if existing["user"] != user:
                raise RequestError(P.ERR_BAD_REQUEST, "request id already used by another user")
            server.log.note(f"retry of {rid}: already applied as "
                            f"{existing['origin']}:{existing['seq']}")
            server.repl.wait(route, rid, existing)
            return
        if op == P.OP_LISTEN:
            self.listeners.drop(rid)             # re-sent: a retry, or the user stopping
        plan = self.requests.plan(op, user, args)
        if isinstance(plan, dict):               # nothing to write
            if op == P.OP_LISTEN and args["wait"] > 0:
                until = listen_until or time.monotonic() + args["wait"]
                self.listeners.park(route, rid, user, args, until)
            else:
                self.reply(route, rid, plan)
            return
        kind, data = plan
        event = server.repl.create(kind, user, data, rid, server.lamport.tick(),
                                   server.clock.stamp())
        server.outbox.append(event)
        server.repl.wait(route, rid, event)

    def wake_listeners(self) -> None:
        """New posts or messages: answer the parked listens that now have items
        (or, when this server stopped serving, send them elsewhere)."""
        server = self.server
        for p in self.listeners.take_all():
            try:
                if server.phase != SERVING:
                    raise RequestError(P.ERR_UNAVAILABLE, f"{server.name} is {server.phase}")
                self.on_write(p.route, p.rid, P.OP_LISTEN, p.user, p.args, p.deadline)
            except RequestError as exc:
                self.reply(p.route, p.rid, code=exc.code, error=str(exc))

    def answer_acked(self) -> None:
        """Answer every write that now has enough copies (once per loop turn)."""
        server = self.server
        for waiter, holders in server.repl.ready(time.monotonic()):
            event = server.state.events.get(waiter.event_id)
            if event is None:
                continue
            if holders < server.config.replicas:
                server.log.warn(f"under-replicated: {waiter.event_id} acked with {holders} "
                                f"of {server.config.replicas} copies (too few servers alive)")
            self.reply(waiter.route, waiter.rid, self.requests.result(event, holders))
            server.lag.answered(event, time.monotonic())

    def expire_listeners(self, now: float) -> None:
        """Listens that waited ``wait`` seconds in vain are answered empty."""
        for p in self.listeners.take_expired(now):
            self.reply(p.route, p.rid, {"user": p.user, "items": [], "replicas": None})
