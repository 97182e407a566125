"""Reading a server's data folder back: db.json first, then the log segments.

What the store loads at start-up (``store.py``), what the tests and the tools read
a folder with: every valid event by ``(origin, seq)``, each once, and the log
segments in order (``read_folder``). db.json must be shaped as TinyDB writes it
(``tinydb_problem``); one that is not, or one missing although the segments' numbers
show a fold happened, is handed to the caller's ``damaged`` handler (the store moves
it aside and writes ``DAMAGED``: ``store.py`` says what follows). Each record is
validated and checked against its checksum (``records.py``). Reading changes
nothing itself.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson

from common import protocol as P
from servers.records import key, read_document, read_segment

TINYDB = "db.json"


class DamagedFile(ValueError):
    """db.json is not a TinyDB file (``read_folder`` without a ``damaged`` handler)."""


def segment_number(path: Path) -> int:
    """``wal-000007.jsonl`` -> 7."""
    return int(path.stem[4:])


def log_segments(folder: Path) -> list[Path]:
    """The folder's log segments by number (a stray ``wal-copy.jsonl`` is not one)."""
    found = [p for p in folder.glob("wal-*.jsonl") if _number(p.stem[4:])]
    return sorted(found, key=segment_number)


def _number(text: str) -> bool:
    """Decimal digits only (``str.isdigit`` alone takes "²" and "٣")."""
    return text.isascii() and text.isdigit()


def tinydb_problem(raw: bytes) -> tuple[dict | None, str | None]:
    """db.json's content as TinyDB holds it (tables of documents by number, each an
    object), or None and what is wrong with it: the checkpointer and the load can
    only work on that shape."""
    if not raw:
        return None, "is empty"
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return None, f"is not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno})"
    if not isinstance(data, dict):
        return None, f"is not a TinyDB file (the top level is {_kind(data)}, not an object)"
    for name, table in data.items():
        if not isinstance(table, dict):
            return None, f"is not a TinyDB file (table {name!r} is {_kind(table)}, not an object)"
        for doc_id, doc in table.items():
            if not _number(doc_id):
                return None, (f"is not a TinyDB file (table {name!r} has a document id "
                              f"{doc_id[:20]!r}, not a number)")
            if not isinstance(doc, dict):
                return None, (f"is not a TinyDB file (document {doc_id} of table {name!r} "
                              f"is {_kind(doc)}, not an object)")
    return data, None


def _kind(value) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def read_folder(folder: Path, set_aside=None, unverified: Counter | None = None,
                damaged=None) -> tuple[dict[tuple[int, int], P.Event], list[Path]]:
    """Every valid event in a data folder by ``(origin, seq)``, each once, and its
    log segments in order: TinyDB first, then the segments. An event in both (a
    fold killed after it replaced db.json, before it deleted the segment) counts
    once, as the segment has it: the next fold rewrites it in place. A record
    invalid or failing its checksum goes to ``set_aside(where, raw)``; those with
    no checksum (written before checksums) are counted in ``unverified[file]``.

    A db.json that is not a TinyDB file (``tinydb_problem``), or one missing although
    the segments show a fold happened, goes to ``damaged(path, problem)`` (which must
    put it out of the way: the checkpointer could not fold into it) and loads nothing;
    without a handler it raises ``DamagedFile``. Reading changes nothing itself."""
    path = folder / TINYDB
    segments = log_segments(folder)
    held: dict[tuple[int, int], P.Event] = {}
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = None
    data, problem = tinydb_problem(raw) if raw is not None else ({}, None)
    if raw is None and segments and segment_number(segments[0]) > 1:
        problem = "is missing (deleted?)"
    if problem is not None:
        if damaged is None:
            raise DamagedFile(f"{path} {problem}")
        damaged(path, problem)
    for number, doc in (data or {}).get("events", {}).items():
        try:
            event, verified = read_document(doc)
        except P.ProtocolError as exc:
            if set_aside is not None:
                set_aside(f"{path} document {number}: {exc}", P.dumps(doc))
            continue
        held[key(event)] = event
        if not verified and unverified is not None:
            unverified[path.name] += 1
    for segment in segments:
        for event in read_segment(segment, set_aside, unverified):
            held[key(event)] = event
    return held, segments
