"""The checks on the users' writes and reads: minority acks, lost writes, requests
stored twice, stale reads, replies naming a copy that is not kept, retried writes.

Each takes the history the workload recorded (one record per request, ``op``,
``ok``, ``sent``, ``replied`` and what the reply said) and, where it says, what
each server returned, pinned, at the end (``Holdings``). What each finding means,
and its bound, is in ``clients/nemesis/history.py``'s docstring. Pure functions of
recorded data (``tests/test_nemesis.py`` feeds them synthetic histories).
"""
from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from dataclasses import dataclass

STALE_AFTER = 0.5
"""A read must show every write acked this many seconds before it was sent."""
WRITE_OPS = ("post", "dm", "follow")
READ_LIMIT = 1000


@dataclass
class Holdings:
    """What one server returned, pinned, at the end."""
    posts: list[dict]                       # {"id", "text", "lamport", "ts"}
    chats: dict[tuple[str, str], list[dict]]
    following: dict[str, list[str]]


def acked_writes(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("op") in WRITE_OPS and r.get("ok")]


def minority_acks(acked: list[dict], majority: int) -> list[dict]:
    return [w for w in acked if (w.get("replicas") or 0) < majority]


def lost_writes(acked: list[dict], holdings: dict[int, Holdings]) -> list[dict]:
    """Acked writes missing from at least one server's final reads."""
    lost = []
    held = {sid: _held(h) for sid, h in holdings.items()}
    for w in acked:
        missing = [sid for sid, (posts, dms, follows) in sorted(held.items())
                   if not _holds(w, posts, dms, follows)]
        if missing:
            lost.append({"id": w.get("id"), "op": w["op"], "user": w["user"],
                         "acked": w["replied"], "missing_on": missing})
    return lost


def _held(h: Holdings):
    posts = {p["id"] for p in h.posts}
    dms = {m["id"] for chat in h.chats.values() for m in chat}
    follows = {(u, t) for u, names in h.following.items() for t in names}
    return posts, dms, follows


def _holds(w: dict, posts, dms, follows) -> bool:
    if w["op"] == "post":
        return w["id"] in posts
    if w["op"] == "dm":
        return w["id"] in dms
    return (w["user"], w["target"]) in follows


def wrong_copies(acked: list[dict], holdings: dict[int, Holdings]) -> list[dict]:
    """Acked posts and messages whose reply named a copy other than the one a server
    holds at the end: another Lamport stamp, or another timestamp where both are
    known. One entry per write, with what each server holds."""
    held = {sid: {i["id"]: i for i in [*h.posts, *(m for chat in h.chats.values() for m in chat)]}
            for sid, h in holdings.items()}
    found = []
    for w in acked:
        if w["op"] not in ("post", "dm") or w.get("lamport") is None:
            continue
        kept = {sid: items[w["id"]] for sid, items in sorted(held.items()) if w["id"] in items}
        wrong = {sid: {"lamport": i.get("lamport"), "ts": i.get("ts")} for sid, i in kept.items()
                 if i.get("lamport") != w["lamport"]
                 or (w.get("ts") is not None and i.get("ts") is not None and i["ts"] != w["ts"])}
        if wrong:
            found.append({"id": w["id"], "op": w["op"], "user": w["user"], "acked": w["replied"],
                          "tries": w.get("tries"),
                          "told": {"server": w.get("server"), "lamport": w["lamport"],
                                   "ts": w.get("ts")},
                          "kept": wrong})
    return found


def retried_writes(acked: list[dict]) -> list[dict]:
    """Acked writes the client sent more than once (same rid, a higher attempt)."""
    return [w for w in acked if (w.get("tries") or 1) > 1]


def stored_twice(records: list[dict], holdings: dict[int, Holdings]) -> list[dict]:
    """Requests held twice by one server (one id twice, or one unique text under two
    ids, in its final reads), or returned twice by one read during the run; one entry
    per request (named by its text where known)."""
    text_of, sent = {}, {}
    for r in records:
        if r.get("op") in ("post", "dm") and "sent" in r:
            sent[r["text"]] = r["sent"]
            if r.get("id"):
                text_of[r["id"]] = r["text"]
    for h in holdings.values():
        for item in [*h.posts, *(m for chat in h.chats.values() for m in chat)]:
            text_of.setdefault(item["id"], item["text"])
    found: dict[str, dict] = {}

    def add(key: str, **where) -> None:
        found.setdefault(key, {"what": key, "t": sent.get(key), **where})
    for sid, h in sorted(holdings.items()):
        items = [*h.posts, *(m for chat in h.chats.values() for m in chat)]
        for what, count in Counter(i["id"] for i in items).items():
            if count > 1:
                add(text_of.get(what, what), server=sid, copies=count)
        for what, count in Counter(i["text"] for i in items).items():
            if count > 1:
                add(what, server=sid, copies=count)
    for r in records:
        if r.get("ok") and r.get("seen") and r["op"] in ("feed", "chat"):
            for what, count in Counter(r["seen"]).items():
                if count > 1:
                    add(text_of.get(what, what), read=r["rid"], copies=count)
    return list(found.values())


def stale_reads(records: list[dict], after: float = STALE_AFTER) -> tuple[list[dict], int]:
    """Reads missing a write acked ``after`` seconds or more before they were sent; and
    how many reads could not be checked (a feed or chat as long as the read limit)."""
    acked = sorted(acked_writes(records), key=lambda w: w["replied"])
    posts = [w for w in acked if w["op"] == "post"]
    dms = defaultdict(list)
    follows = defaultdict(list)
    for w in acked:
        if w["op"] == "dm":
            dms[frozenset((w["user"], w["to"]))].append(w)
        elif w["op"] == "follow":
            follows[w["user"]].append(w)
    stale, unchecked = [], 0
    for r in records:
        if not r.get("ok") or r.get("op") not in ("feed", "chat", "following"):
            continue
        seen = set(r.get("seen") or ())
        if r["op"] in ("feed", "chat") and len(r["seen"]) >= READ_LIMIT:
            unchecked += 1          # a full page: what is missing may just be past it
            continue
        if r["op"] == "feed":
            due, key = posts, lambda w: w["id"]
        elif r["op"] == "chat":
            due, key = dms[frozenset((r["user"], r["with"]))], lambda w: w["id"]
        else:
            due, key = follows[r["user"]], lambda w: w["target"]
        cut = bisect.bisect_right([w["replied"] for w in due], r["sent"] - after)
        missing = [key(w) for w in due[:cut] if key(w) not in seen]
        if missing:
            stale.append({"rid": r["rid"], "op": r["op"], "user": r["user"], "t": r["sent"],
                          "server": r.get("server"), "pinned": r.get("pinned"),
                          "missing": len(set(missing))})
    return stale, unchecked
