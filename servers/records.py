"""Stored records: an event as a line of a log segment and as a TinyDB document,
and back.

A document's id is derived from the event's name, ``(origin, seq)``
(``doc_id``), so folding an event twice writes the same document in the same
place: a fold repeated after a crash (``db.json`` replaced, the segment not yet
deleted) changes nothing, where TinyDB's own ids made a second copy of every
event. Documents written before ids were derived keep theirs; a fold that meets
one of their events again moves it under the derived id (``checkpointer.py``).
"""
from __future__ import annotations

from pathlib import Path

from common import protocol as P

DOC_ID_SPAN = 10 ** 16
"""Above every sequence number (< 2**53): ``doc_id`` reads ``origin`` then ``seq``
(event 1:5 is document 10000000000000005)."""


def key(event: P.Event) -> tuple[int, int]:
    """The name of an event everywhere: ``(origin, seq)``."""
    return (event.origin, event.seq)


def doc_id(origin: int, seq: int) -> int:
    """The TinyDB document id of event ``(origin, seq)``."""
    return origin * DOC_ID_SPAN + seq


def wal_line(event: P.Event) -> bytes:
    """An event as one line of a log segment."""
    return P.dumps(event) + b"\n"


def document(event: P.Event) -> dict:
    """An event as a TinyDB document (its id is ``doc_id``)."""
    return P.to_builtins(event)


def read_document(doc) -> P.Event:
    """The event a TinyDB document holds; ProtocolError if it is not a valid one."""
    return P.convert(dict(doc), P.Event)


def read_segment(path: Path, set_aside=None) -> list[P.Event]:
    """The valid events of one log segment (none if it is gone: already folded).

    A torn last line (a kill in mid-write) was never acknowledged and is skipped
    silently; any other line that is not a valid event goes to ``set_aside(where, raw)``."""
    events = []
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return events
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            events.append(P.decode_event(line))
        except P.ProtocolError as exc:
            torn = number == len(lines)          # no newline after it: cut mid-write
            if not torn and set_aside is not None:
                set_aside(f"{path} line {number}: {exc}", line)
    return events
