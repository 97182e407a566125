"""``listen``: the user's live items, one long poll after another, until stopped.

A command like the others on the way in (``commands.execute`` runs it, on a session
of its own or a shell's), but not on the way out: rather than one request and its
result it keeps a listen request parked on a server, prints each item as it comes
(``render.push``, or one JSON document per item), and on Ctrl-C or the end of
``--seconds`` takes back the request still parked. Its own module because only
``listen`` needs it: ``commands.execute`` imports it when the command is run, so
that no other command pays for it at start-up.
"""
from __future__ import annotations

import dataclasses
import time

from clients import render
from clients.commands import GlobalOptions, opened, say, warn
from common import protocol

LISTEN_WAIT = 10.0
"""Seconds one listen request may stay parked on a server before it is asked again."""
LOST = "connection lost, retrying…"
BACK = "reconnected"
CANCEL_DEADLINE = 2.0
"""Seconds a stopping ``listen`` spends unparking its long poll (plus one request
timeout), when the cluster is slow or gone."""


class ListenLoop:
    """The client side of ``listen``: one long poll after another.

    A listen parked on a server takes the items that arrive while it waits and
    marks them shown. If the user stops while one is parked, ``cancel`` sends it
    again with the same request id, as a later try, and no wait: the server holding
    it drops the parked one and answers at once; any other server (the broker's pool
    changed meanwhile) writes an empty SEEN under that request id, which outranks
    the parked copy's (``protocol.copy_key``). Nothing is marked shown that was not
    printed.

    When the cluster stops answering, the same request goes out again until it does
    ("connection lost, retrying…", then "reconnected" on stderr). Items stamped
    before the listener started, or before it got its connection back, were missed
    while away: ``show`` is told so."""

    def __init__(self, session, show) -> None:
        self.session, self.show = session, show
        self.since = session.lamport.value
        self.away_until = session.clock.stamp()
        self.in_flight = None                # the parked request (protocol.Request)
        self.lost = False
        session.connection.on_waiting = self._lose
        session.connection.watch_disconnects()

    def _lose(self, _line: str) -> None:
        if not self.lost:
            self.lost = True
            warn(LOST)

    def poll(self, wait: float) -> None:
        from clients.connection import ClientError
        conn = self.session.connection
        if self.in_flight is None:
            self.in_flight = conn.build(protocol.OP_LISTEN,
                                        {"wait": round(wait, 3), "since": self.since})
        try:
            result = conn.exchange(self.in_flight)
        except ClientError as exc:
            if exc.code != protocol.ERR_UNAVAILABLE:
                raise
            self._lose("")
            return                          # the same request again, same rid
        self.in_flight = None
        if self.lost:
            self.lost = False
            self.away_until = self.session.clock.stamp()
            warn(BACK)
        self.show(result, self.away_until)
        self.session.log.flush()

    def cancel(self) -> None:
        from clients.connection import ClientError
        if self.in_flight is None:
            return
        conn = self.session.connection
        conn.config = dataclasses.replace(conn.config, request_deadline=CANCEL_DEADLINE)
        try:
            self.show(conn.exchange(protocol.with_args(self.in_flight, wait=0.0)),
                      self.away_until)
        except (ClientError, KeyboardInterrupt):
            pass


def missed(item: dict, away_until: float) -> bool:
    """Stamped before the listener was there to see it arrive."""
    stamp = item.get("timestamp")
    return isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and stamp < away_until


def listen(options: GlobalOptions, seconds: float | None, as_json: bool, session=None) -> int:
    """Live items until ``seconds`` have passed (or Ctrl-C); see ``ListenLoop``."""
    stop_at = None if seconds is None else time.monotonic() + seconds

    def show(result: dict, away_until: float) -> None:
        for item in result.get("items", []):
            was_missed = missed(item, away_until)
            if as_json:
                say(protocol.dumps({**item, "missed": True} if was_missed else item).decode())
            else:
                say(render.push(item, was_missed))

    try:
        with opened(options, session) as s:
            s.call(protocol.OP_USERS, {}, None)        # logs in, if need be
            if not as_json:
                say(f"listening as {options.user} " +
                    ("(Ctrl-C to stop)" if seconds is None else f"for {render.number(seconds)} s"))
            before = s.connection.on_waiting
            listening = ListenLoop(s, show)
            try:
                while stop_at is None or time.monotonic() < stop_at:
                    left = LISTEN_WAIT if stop_at is None else stop_at - time.monotonic()
                    listening.poll(max(0.0, min(LISTEN_WAIT, left)))
            except KeyboardInterrupt:
                listening.cancel()
            finally:
                s.connection.on_waiting = before      # a shell's next command
    except KeyboardInterrupt:
        pass
    return 0
