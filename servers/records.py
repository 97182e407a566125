"""Stored records: an event as a line of a log segment and as a TinyDB document,
and back, each with its checksum.

Every record carries ``sum``, a checksum (BLAKE2b, 64 bits, hex) of the event's
canonical encoding, ``protocol.dumps(event)``: in a log line it is the last
field of the JSON object (``{"id":…,"data":{…},"sum":"3f2a…"}``, so a line is
the canonical bytes with the sum spliced in before the closing brace), in a
document one more key. A record whose sum does not match is set aside like an
invalid one (``ChecksumError``): an edit that still parses, a flipped byte, is
never served or folded. Records written before checksums carry none; they load
as *unverified*, counted for one log line per start.

A document's id is derived from the event's name, ``(origin, seq)``
(``doc_id``), so folding an event twice writes the same document in the same
place: a fold repeated after a crash (``db.json`` replaced, the segment not yet
deleted) changes nothing, where TinyDB's own ids made a second copy of every
event. Documents written before ids were derived keep theirs; a fold that meets
one of their events again moves it under the derived id (``checkpointer.py``).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import msgspec

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


_SUM_KEY = b',"sum":"'
_SUM_HEX = 16
_SUFFIX = len(_SUM_KEY) + _SUM_HEX + 2          # ,"sum":"<16 hex>"}


class ChecksumError(P.ProtocolError):
    """A stored record whose checksum does not match its event."""


def checksum(canonical: bytes) -> str:
    return hashlib.blake2b(canonical, digest_size=_SUM_HEX // 2).hexdigest()


def wal_line(event: P.Event, raw: bytes | None = None) -> bytes:
    """An event as one line of a log segment, its checksum spliced in last (``raw``:
    the event as ``P.dumps`` gives it, if the caller has it already)."""
    body = P.dumps(event) if raw is None else raw
    return b"%s%s%s\"}\n" % (body[:-1], _SUM_KEY, checksum(body).encode())


def _vouched_body(line: bytes) -> bytes | None:
    """The canonical bytes of a log line whose checksum vouches for them; None for a
    line from before checksums; ChecksumError if its sum does not match."""
    if line[-_SUFFIX:-_SUFFIX + len(_SUM_KEY)] == _SUM_KEY and line.endswith(b'"}'):
        body = line[:-_SUFFIX] + b"}"
        stored = line[-_SUM_HEX - 2:-2].decode("ascii", "replace")
        if checksum(body) != stored:
            raise ChecksumError(f"checksum mismatch: the record says {stored}, "
                                f"its content {checksum(body)}")
        return body
    return None


def read_line(line: bytes) -> tuple[P.Event, bool]:
    """The event of a log line, and whether a checksum vouched for it (False: a
    line from before checksums); ProtocolError (ChecksumError) if it is bad."""
    body = _vouched_body(line)
    if body is not None:
        return P.decode_event(body), True
    return P.decode_event(line), False


_plain = msgspec.json.Decoder()


def line_document(line: bytes) -> dict:
    """The TinyDB document of a log line's event, ``document(read_line(line)[0])``,
    without building the event when its checksum vouches for the line: the line is
    then that document as JSON already (the event's canonical fields, its sum last).
    The fold takes every event this way, a few times cheaper. ProtocolError
    (ChecksumError) if the line is bad."""
    if _vouched_body(line) is None:
        return document(read_line(line)[0])          # before checksums: checked in full
    doc = _plain.decode(line)
    if not (isinstance(doc, dict) and type(doc.get("origin")) is int
            and type(doc.get("seq")) is int):
        raise P.ProtocolError("a log line vouched for by its sum is not an event")
    return doc


def document(event: P.Event) -> dict:
    """An event as a TinyDB document (its id is ``doc_id``), with its checksum."""
    return {**P.to_builtins(event), "sum": checksum(P.dumps(event))}


def read_document(doc) -> tuple[P.Event, bool]:
    """The event a TinyDB document holds, and whether a checksum vouched for it;
    ProtocolError (ChecksumError) if it is not a valid event or its sum fails."""
    fields = dict(doc)
    stored = fields.pop("sum", None)
    event = P.convert(fields, P.Event)
    if stored is None:
        return event, False
    computed = checksum(P.dumps(event))
    if stored != computed:
        raise ChecksumError(f"checksum mismatch: the record says {stored}, "
                            f"its content {computed}")
    return event, True


def read_segment_documents(path: Path) -> dict[tuple[int, int], dict]:
    """The TinyDB documents of a log segment's valid events (``line_document``), by
    event name; what ``read_segment`` skips (torn and invalid lines) is skipped."""
    docs: dict[tuple[int, int], dict] = {}
    try:
        segment = open(path, "rb")     # line by line: no copy of the whole segment
    except FileNotFoundError:
        return docs
    with segment:
        for line in segment:
            line = line.rstrip(b"\n")
            if not line:
                continue
            try:
                doc = line_document(line)
            except (P.ProtocolError, msgspec.DecodeError):
                continue
            docs[(doc["origin"], doc["seq"])] = doc
    return docs


def read_segment(path: Path, set_aside=None, unverified: Counter | None = None
                 ) -> list[P.Event]:
    """The valid events of one log segment (none if it is gone: already folded).

    A torn last line (a kill in mid-write) was never acknowledged and is skipped
    silently; any other line that is not a valid event, or whose checksum fails
    (even the last: a torn line lacks its sum), goes to ``set_aside(where, raw)``.
    Lines without a checksum are counted in ``unverified[path name]``."""
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
            event, verified = read_line(line)
        except P.ProtocolError as exc:
            # no newline after it: cut mid-write, unless its sum was all there
            torn = number == len(lines) and not isinstance(exc, ChecksumError)
            if not torn and set_aside is not None:
                set_aside(f"{path} line {number}: {exc}", line)
            continue
        events.append(event)
        if not verified and unverified is not None:
            unverified[path.name] += 1
    return events
