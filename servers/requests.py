"""What each client operation means on a server: a read, or an event to write.

The server (``servers/node.py``) owns the sockets and the replication; this
module only turns a validated request into a result or into the data of a new
event, and an event back into the result the client sees.
"""
from __future__ import annotations

from common import protocol as P
from servers.state import SocialState, dm_view, follow_view, post_view


class RequestError(Exception):
    """A request that cannot be served as asked: the client gets code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ClientRequests:
    def __init__(self, state: SocialState) -> None:
        self.state = state

    def _known(self, name: str) -> str:
        if name not in self.state.users:
            raise RequestError(P.ERR_UNKNOWN_USER, f"unknown user {name!r}")
        return name

    # --- reads --------------------------------------------------------------------
    def read(self, op: str, user: str, args: P.Args) -> dict:
        state = self.state
        if op == P.OP_FEED:
            return {"user": user, "posts": state.feed(user, args.limit)}
        if op == P.OP_CHAT:
            other = self._known(args.with_)
            return {"user": user, "with": other,
                    "messages": state.chat(user, other, args.limit)}
        if op == P.OP_FOLLOWING:
            names = state.follows(user)
            return {"user": user, "following": names[:P.MAX_NAMES], "total": len(names)}
        if op == P.OP_USERS:
            names = sorted(state.users)
            return {"users": names[:P.MAX_NAMES], "total": len(names)}
        raise RequestError(P.ERR_BAD_REQUEST, f"{op} is not a read")

    # --- writes -------------------------------------------------------------------
    def plan(self, op: str, user: str, args: P.Args) -> tuple[str, P.EventData] | dict:
        """The (kind, data) of the event to write, or a result when nothing is to be written
        (register, login and logout are ``servers/accounts.py``'s)."""
        if op == P.OP_POST:
            return P.EV_POST, P.EventData(text=args.text)
        if op == P.OP_FOLLOW:
            return P.EV_FOLLOW, P.EventData(target=self._known(args.target))
        if op == P.OP_UNFOLLOW:
            target = self._known(args.target)
            if target not in self.state.following.get(user, ()):
                raise RequestError(P.ERR_BAD_REQUEST, f"you do not follow {target!r}")
            return P.EV_UNFOLLOW, P.EventData(target=target)
        if op == P.OP_DM:
            return P.EV_DM, P.EventData(to=self._known(args.to), text=args.text)
        if op == P.OP_NOTIFICATIONS:
            fresh = self.state.notifications(user)      # at most MAX_LIMIT: a reply that fits
            if not fresh:
                return {"user": user, "notifications": [], "replicas": None}
            return P.EV_SEEN, P.EventData(shown=[p["id"] for p in fresh], delivered=[])
        if op == P.OP_LISTEN:
            posts, messages = self.state.unseen(user, args.since)
            if not posts and not messages:
                return {"user": user, "items": [], "replicas": None}
            messages = messages[:P.MAX_LIMIT - len(posts)]  # one reply's worth; the rest next
            return P.EV_SEEN, P.EventData(shown=[p["id"] for p in posts],
                                          delivered=[m["id"] for m in messages])
        raise RequestError(P.ERR_BAD_REQUEST, f"{op} is not a write")

    def _seen_result(self, event: P.Event) -> dict:
        """``notifications`` lists the posts; ``items`` (for listen) posts and
        messages together, each tagged with its type, in logical order."""
        data, events = event.data, self.state.events
        posts = sorted((events[i] for i in data.shown if i in events), key=P.order_key)
        messages = [events[i] for i in data.delivered if i in events]
        items = sorted(posts + messages, key=P.order_key)
        return {"user": event.user,
                "notifications": [post_view(p, True) for p in posts],
                "items": [dict(post_view(e), type="post") if e.kind == P.EV_POST
                          else dict(dm_view(e), type="message") for e in items]}

    def result(self, event: P.Event, replicas: int) -> dict:
        """What the client sees of a write, from the event that holds it."""
        kind = event.kind
        if kind == P.EV_POST:
            body = {"post": post_view(event)}
        elif kind == P.EV_DM:
            body = {"message": dm_view(event)}
        elif kind in (P.EV_FOLLOW, P.EV_UNFOLLOW):
            body = {"follow": follow_view(event)}
        elif kind in (P.EV_REGISTER, P.EV_ACCOUNT):
            body = {"user": event.user, "new": True}
        elif kind == P.EV_SESSION:
            body = {"user": event.user, "expires": event.data.expires,
                    "session": event.data.token[:8]}
        elif kind == P.EV_LOGOUT:
            body = {"user": event.user, "logged_out": True, "session": event.data.token[:8]}
        else:  # EV_SEEN: what it marked shown, oldest first
            body = self._seen_result(event)
        body["replicas"] = replicas
        return body
