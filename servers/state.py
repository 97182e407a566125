"""The replicated state of one server: every event, and what users see of them.

Events are the unit of replication. Each carries its origin server and that
server's sequence number, so a server's holdings are summed up by a version
vector ``{origin: highest contiguous seq}``. Everything users see (feeds,
chats, notifications) is derived from the set of events in one total order,
``(lamport, id)``, so two servers holding the same events answer the same.

An event's ``id`` is the client's request id. If a retried request reached two
servers that each made an event of it (the first died before replicating),
both events keep their place in their origin's log, but only the one with the
smaller order key counts: every server picks the same one, and the write is
applied exactly once.

Accounts follow the same rule, so every server agrees on them whatever order the
events came in: a name's owner is its ACCOUNT event that counts with the smallest
order key (two servers that registered one name at once: the later loses,
everywhere); a session token is valid while a SESSION event of it counts that was
granted against the owner's ACCOUNT event, has not expired, and no LOGOUT of it by
the same user counts.
"""
from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right, insort
from heapq import merge
from itertools import islice

from common import protocol as P

Key = tuple  # (lamport, id)


_LOW63 = (1 << 63) - 1       # a fingerprint fits an int64 (msgspec, JSON readers)


def _event_hash(event: P.Event, raw: bytes | None = None) -> int:
    """``raw``: the event as ``P.dumps`` gives it, if the caller has it already."""
    if raw is None:
        raw = P.dumps(event)      # a Struct encodes its fields in one fixed order
    return int.from_bytes(hashlib.blake2b(raw, digest_size=16).digest(), "big")


def fingerprint(events) -> int:
    """The XOR of the low 63 bits of each event's hash (``protocol.Fingerprint``)."""
    out = 0
    for event in events:
        out ^= _event_hash(event) & _LOW63
    return out


_TAIL = 64
"""How far from the end of a sorted view a new key is first looked for."""


def _insort(sorted_list: list, item) -> None:
    """``insort``, with the common cases first: a newer key goes at the end, and one
    a little older (another server's write of the same moment) among the last few,
    without a search of the whole list (cold memory, on a list of every post)."""
    n = len(sorted_list)
    if not n or sorted_list[-1] < item:
        sorted_list.append(item)
    elif n > _TAIL and sorted_list[n - _TAIL] < item:
        insort(sorted_list, item, n - _TAIL)
    else:
        insort(sorted_list, item)


def _remove(sorted_list: list, item) -> None:
    i = bisect_left(sorted_list, item)
    if i < len(sorted_list) and sorted_list[i] == item:
        del sorted_list[i]


class SocialState:
    def __init__(self) -> None:
        self.by_origin: dict[int, list[P.Event]] = {}   # every event, seq-1 -> event
        # the fingerprint of each origin's seqs 1..n, for every n: prefix[o][n-1]
        self.prefix: dict[int, list[int]] = {}
        self.events: dict[str, P.Event] = {}            # id -> the event that counts
        self.users: dict[str, int] = {}              # name -> events by them
        self.posts: list[Key] = []
        self.posts_by: dict[str, list[Key]] = {}
        self.follow_log: dict[tuple[str, str], list[tuple[Key, bool]]] = {}
        self.following: dict[str, set[str]] = {}
        self.followers: dict[str, set[str]] = {}     # target -> who follows them now
        self.chats: dict[tuple[str, str], list[Key]] = {}
        self.seen_by: dict[str, list[Key]] = {}      # user -> SEEN events that count
        self.shown: dict[str, set[str]] = {}         # posts shown (notifications, listen)
        self.inbox: dict[str, list[Key]] = {}        # user -> messages to them
        self.delivered: dict[str, set[str]] = {}     # messages pushed by listen
        self.accounts: dict[str, list[Key]] = {}     # user -> their ACCOUNT events, oldest first
        self.sessions: dict[str, list[Key]] = {}     # token hash -> SESSION events of it
        self.logouts: dict[str, list[Key]] = {}      # token hash -> LOGOUT events of it
        self._digest = 0

    # --- replication bookkeeping -------------------------------------------------
    def vv(self) -> dict[int, int]:
        return {origin: len(log) for origin, log in self.by_origin.items()}

    def seq_of(self, origin: int) -> int:
        log = self.by_origin.get(origin)
        return len(log) if log else 0

    def next_seq(self, origin: int) -> int:
        return self.seq_of(origin) + 1

    def sums(self) -> dict[int, int]:
        """The fingerprint of each origin's events held (``protocol.Fingerprints``)."""
        return {origin: prefix[-1] for origin, prefix in self.prefix.items() if prefix}

    def sum_at(self, origin: int, seq: int) -> int | None:
        """The fingerprint of the events of ``origin`` with seq 1..``seq``; None if
        I do not hold them all."""
        prefix = self.prefix.get(origin, [])
        if seq > len(prefix):
            return None
        return prefix[seq - 1] if seq else 0

    def block_sums(self, origin: int, lo: int, hi: int, block: int) -> list[int] | None:
        """Fingerprints of seqs (lo, hi] in blocks of ``block``; None unless I hold up to hi."""
        prefix = self.prefix.get(origin, [])
        if hi > len(prefix):
            return None
        at = lambda seq: prefix[seq - 1] if seq else 0     # noqa: E731
        return [at(min(start + block, hi)) ^ at(start) for start in range(lo, hi, block)]

    def copies(self, origin: int, lo: int, hi: int) -> list[P.Event] | None:
        """My events of ``origin`` with seq in (lo, hi]; None unless I hold them all."""
        log = self.by_origin.get(origin, [])
        return log[lo:hi] if hi <= len(log) else None

    def copy_at(self, origin: int, seq: int) -> P.Event | None:
        log = self.by_origin.get(origin, [])
        return log[seq - 1] if 0 < seq <= len(log) else None

    def events_after(self, after: dict[int, int], limit: int) -> list[P.Event]:
        """Events of the origins named in ``after`` beyond its seqs, oldest seq first."""
        out: list[dict] = []
        for origin, start in after.items():
            log = self.by_origin.get(origin, [])
            if start < len(log):
                out.extend(log[start:start + limit - len(out)])
                if len(out) >= limit:
                    break
        return out

    def apply(self, event: P.Event, raw: bytes | None = None) -> bool:
        """Add the next event of its origin. Returns False if already held.

        The caller guarantees ``event["seq"] == seq_of(origin) + 1``; ``raw`` is the
        event as ``P.dumps`` gives it, if the caller has it already (its log line).
        """
        log = self.by_origin.setdefault(event.origin, [])
        if event.seq <= len(log):
            return False
        if event.seq != len(log) + 1:
            raise ValueError(f"gap: seq {event.seq} after {len(log)}")
        log.append(event)
        h = _event_hash(event, raw)
        prefix = self.prefix.setdefault(event.origin, [])
        prefix.append((prefix[-1] if prefix else 0) ^ (h & _LOW63))
        self._count_copy(event, h)
        return True

    def replace(self, event: P.Event) -> P.Event:
        """Put ``event`` in place of the copy of ``(origin, seq)`` held (a repair);
        returns the copy it replaced. Every derived view follows, exactly: the
        replaced copy is withdrawn if it counted, and the best remaining copy of
        its request id (if any) counts instead."""
        log = self.by_origin[event.origin]
        i = event.seq - 1
        old = log[i]
        log[i] = event
        delta = (_event_hash(old) ^ _event_hash(event)) & _LOW63
        prefix = self.prefix[event.origin]
        for j in range(i, len(prefix)):
            prefix[j] ^= delta
        if self.events.get(old.id) is old:
            self._count(old, -1)
            best = min((e for log_ in self.by_origin.values() for e in log_ if e.id == old.id),
                       key=P.copy_key, default=None)
            if best is not None:
                self._count(best, +1)
        if self.events.get(event.id) is not event:
            self._count_copy(event)
        return old

    def _count_copy(self, event: P.Event, h: int | None = None) -> None:
        """A copy now held counts unless a copy of its request id with a smaller
        copy key already does."""
        current = self.events.get(event.id)
        if current is None:
            self._count(event, +1, h)
        elif P.copy_key(event) < P.copy_key(current):
            self._count(current, -1)
            self._count(event, +1, h)

    @property
    def count(self) -> int:
        return len(self.events)

    def digest(self) -> str:
        """A hash of the set of events that count: equal exactly when states are."""
        return f"{self._digest:032x}"

    # --- derived views ----------------------------------------------------------------
    def _count(self, event: P.Event, sign: int, h: int | None = None) -> None:
        """Add (sign=+1) or withdraw (sign=-1) an event from every derived view."""
        key = P.order_key(event)
        user, data, kind = event.user, event.data, event.kind
        self._digest ^= _event_hash(event) if h is None else h
        self.users[user] = self.users.get(user, 0) + sign
        if self.users[user] == 0:
            del self.users[user]
        if sign > 0:
            self.events[event.id] = event
        else:
            del self.events[event.id]
        edit = _insort if sign > 0 else _remove
        if kind == P.EV_POST:
            edit(self.posts, key)
            edit(self.posts_by.setdefault(user, []), key)
        elif kind in (P.EV_FOLLOW, P.EV_UNFOLLOW):
            pair = (user, data.target)
            edit(self.follow_log.setdefault(pair, []), (key, kind == P.EV_FOLLOW))
            self._refresh_following(pair)
        elif kind == P.EV_DM:
            edit(self.chats.setdefault(_pair(user, data.to), []), key)
            edit(self.inbox.setdefault(data.to, []), key)
        elif kind == P.EV_SEEN:
            edit(self.seen_by.setdefault(user, []), key)
            self._refresh_shown(user)
        elif kind == P.EV_ACCOUNT:
            _edit_index(self.accounts, user, key, sign)
        elif kind == P.EV_SESSION:
            _edit_index(self.sessions, data.token, key, sign)
        elif kind == P.EV_LOGOUT:
            _edit_index(self.logouts, data.token, key, sign)

    def _refresh_following(self, pair: tuple[str, str]) -> None:
        user, target = pair
        log = self.follow_log.get(pair)
        targets = self.following.setdefault(user, set())
        followers = self.followers.setdefault(target, set())
        if log and log[-1][1]:
            targets.add(target)
            followers.add(user)
        else:
            targets.discard(target)
            followers.discard(user)

    def _refresh_shown(self, user: str) -> None:
        # rebuilt from the SEEN events that count, so withdrawing one is exact
        shown: set[str] = set()
        delivered: set[str] = set()
        for key in self.seen_by.get(user, []):
            data = self.events[key[1]].data
            shown.update(data.shown)
            delivered.update(data.delivered)
        self.shown[user] = shown
        self.delivered[user] = delivered

    # --- accounts ---------------------------------------------------------------------------
    def owner(self, user: str) -> P.Event | None:
        """The ACCOUNT event that owns ``user``: of those that count, the first in
        the total order. None: nobody has claimed the name."""
        keys = self.accounts.get(user)
        return self.events[keys[0][1]] if keys else None

    def session_of(self, token_hash: str, user: str, now: float) -> P.Event | None:
        """The SESSION event that makes ``token_hash`` a valid token of ``user`` at
        wall time ``now``; None if there is none: never granted, granted to someone
        else or against an account that lost its name, expired, or logged out."""
        owner = self.owner(user)
        if owner is None:
            return None
        if any(self.events[k[1]].user == user for k in self.logouts.get(token_hash, ())):
            return None
        for key in self.sessions.get(token_hash, ()):
            session = self.events[key[1]]
            if (session.user == user and session.data.account == owner.id
                    and session.data.expires > now):
                return session
        return None

    # --- queries (what users see) --------------------------------------------------------
    def event_by_key(self, key: Key) -> P.Event:
        return self.events[key[1]]

    def feed(self, user: str, limit: int) -> list[dict]:
        """Followed users' posts first, then everyone else's; each newest first."""
        followed = self.following.get(user, set())
        mine = (reversed(self.posts_by.get(author, [])) for author in followed)
        first = list(islice(merge(*mine, reverse=True), limit))
        rest = (k for k in reversed(self.posts)
                if self.events[k[1]].user not in followed)
        second = list(islice(rest, limit - len(first)))
        return ([post_view(self.event_by_key(k), True) for k in first]
                + [post_view(self.event_by_key(k), False) for k in second])

    def chat(self, user: str, other: str, limit: int) -> list[dict]:
        keys = self.chats.get(_pair(user, other), [])
        return [dm_view(self.event_by_key(k)) for k in keys[-limit:]]

    def follows(self, user: str) -> list[str]:
        return sorted(self.following.get(user, set()))

    def notifications(self, user: str, limit: int = P.MAX_LIMIT) -> list[dict]:
        """Posts by users I followed at the time they posted, not yet shown, oldest first."""
        shown = self.shown.get(user, set())
        found: list[Key] = []
        for (follower, target), log in self.follow_log.items():
            if follower != user:
                continue
            posts = self.posts_by.get(target, [])
            for start, end in _intervals(log):
                lo = bisect_right(posts, start)
                hi = bisect_left(posts, end) if end is not None else len(posts)
                found.extend(k for k in posts[lo:hi] if k[1] not in shown)
        found.sort()
        return [post_view(self.event_by_key(k), True) for k in found[:limit]]


    def concerned(self, events: list[P.Event]) -> set[str]:
        """The users for whom these events bring something to push: the followers
        of each post's author, the recipient of each message."""
        users: set[str] = set()
        for event in events:
            if event.kind == P.EV_POST:
                users.update(self.followers.get(event.user, ()))
            elif event.kind == P.EV_DM:
                users.add(event.data.to)
        return users

    def unseen(self, user: str, since: int) -> tuple[list[dict], list[dict]]:
        """For ``listen``: posts not yet shown, and messages to me stamped after
        ``since`` not yet delivered; each oldest first."""
        posts = self.notifications(user)
        delivered = self.delivered.get(user, set())
        inbox = self.inbox.get(user, [])
        start = bisect_right(inbox, (since, "\uffff"))
        messages = [dm_view(self.events[k[1]]) for k in inbox[start:] if k[1] not in delivered]
        return posts, messages


def _edit_index(index: dict[str, list[Key]], name: str, key: Key, sign: int) -> None:
    """Add or withdraw ``key`` in the sorted list ``index[name]``; no empty lists kept."""
    if sign > 0:
        insort(index.setdefault(name, []), key)
        return
    keys = index.get(name, [])
    _remove(keys, key)
    if not keys:
        index.pop(name, None)


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def _intervals(log: list[tuple[Key, bool]]):
    """(follow key, unfollow key or None) for each stretch of following."""
    start = None
    for key, on in log:
        if on and start is None:
            start = key
        elif not on and start is not None:
            yield start, key
            start = None
    if start is not None:
        yield start, None


def post_view(event: P.Event, followed: bool | None = None) -> dict:
    view = {"id": event.id, "author": event.user, "text": event.data.text,
            "lamport": event.lamport, "timestamp": event.ts}
    if followed is not None:
        view["followed"] = followed
    return view


def dm_view(event: P.Event) -> dict:
    return {"id": event.id, "from": event.user, "to": event.data.to,
            "text": event.data.text, "lamport": event.lamport, "timestamp": event.ts}


def follow_view(event: P.Event) -> dict:
    return {"id": event.id, "user": event.user, "target": event.data.target,
            "following": event.kind == P.EV_FOLLOW, "lamport": event.lamport,
            "timestamp": event.ts}
