"""docs/ARCHITECTURE.md stays true to common/protocol.py.

Every message type and each of its fields, every client operation with its
arguments and kind, every event field and kind with its data, and every error
code must be documented -- and the tables must not name any the protocol lacks.
"""
from __future__ import annotations

import re

import pytest

from common import protocol as P
from common.processes import ROOT

DOC = ROOT / "docs" / "ARCHITECTURE.md"


def section(title: str) -> str:
    """The text under ``## title``, up to the next ``## `` heading."""
    text = DOC.read_text()
    match = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/ARCHITECTURE.md has no section '## {title}'"
    return match[1]


def rows(text: str) -> list[list[str]]:
    """The cells of every table row in ``text`` (header and separator rows left out)."""
    out = []
    for line in text.splitlines():
        if not line.startswith("|") or re.fullmatch(r"[|\s:-]+", line):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith("`"):
            out.append(cells)
    return out


def code(name: str) -> str:
    return f"`{name}`"


@pytest.mark.timeout(10)
def test_every_message_type_and_each_of_its_fields_has_a_row_in_the_message_table():
    documented = {(cells[0], cells[2]) for cells in rows(section("Messages"))}
    missing = [f"{msg_type}.{name}" for msg_type, schema in P.SCHEMAS.items()
               for name in schema if (code(msg_type), code(name)) not in documented]
    assert not missing, f"not in the message table of docs/ARCHITECTURE.md: {missing}"


@pytest.mark.timeout(10)
def test_the_message_table_names_no_type_or_field_the_protocol_lacks():
    known = {(code(t), code(f)) for t, schema in P.SCHEMAS.items() for f in schema}
    extra = [f"{t}.{f}" for t, _, f, *_ in rows(section("Messages")) if (t, f) not in known]
    assert not extra, f"documented but not in protocol.SCHEMAS: {extra}"


@pytest.mark.timeout(10)
def test_every_client_operation_is_documented_with_its_arguments_and_kind():
    table = {cells[0]: cells for cells in rows(section("Client operations"))}
    kinds = {**{op: "write" for op in P.WRITE_OPS}, **{op: "read" for op in P.READ_OPS},
             **{op: "broker" for op in P.BROKER_OPS}}
    assert set(table) == {code(op) for op in P.OP_ARGS}
    for op, args in P.OP_ARGS.items():
        _, arguments, kind, _meaning = table[code(op)]
        for name in args:
            assert code(name) in arguments, f"{op}: argument {name!r} not documented"
        assert kind == kinds[op], f"{op} is documented as {kind!r}, but it is a {kinds[op]}"


@pytest.mark.timeout(10)
def test_every_event_field_and_kind_is_documented_with_its_data():
    table = {cells[0]: cells for cells in rows(section("Events"))}
    for name in P.EVENT_FIELDS:
        assert code(name) in table, f"event field {name!r} not documented"
    for kind in P.EVENT_KINDS:
        assert code(kind) in table, f"event kind {kind!r} not documented"
        for name in P.EVENT_DATA[kind]:
            assert code(name) in table[code(kind)][1], f"{kind} event: {name!r} not documented"
    assert set(table) == {code(n) for n in P.EVENT_FIELDS} | {code(k) for k in P.EVENT_KINDS}


@pytest.mark.timeout(10)
def test_every_error_code_and_the_diagram_are_there():
    text = DOC.read_text()
    codes = [getattr(P, name) for name in dir(P) if name.startswith("ERR_")]
    assert codes and all(code(c) in text for c in codes)
    assert "```mermaid" in text
