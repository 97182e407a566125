"""docs/ARCHITECTURE.md stays true to common/protocol/, README.md's layout to the code.

Every message type and each of its fields (``protocol.MESSAGES``,
``protocol.fields_of``), the fields of a server's status row, which socket
accepts which types (the ``Route`` constants), every client operation with its
arguments and kind, every event field and kind with its data, and every error
code must be documented -- and the tables must not name any the protocol lacks.
The diagram's arrows name only real message types.
The README's Layout tree has one line for each module of broker/, servers/,
common/ and clients/ (``__init__.py`` aside), and none for a module not there.
"""
from __future__ import annotations

import re

import msgspec
import pytest

from common import protocol as P
from common.processes import ROOT

DOC = ROOT / "docs" / "ARCHITECTURE.md"
README = ROOT / "README.md"
PACKAGES = ("broker", "servers", "common", "clients")


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


def names_in(cell: str) -> list[str]:
    """The names a cell spells in backticks, in order."""
    return re.findall(r"`([^`]+)`", cell)


def message_fields() -> set[tuple[str, str]]:
    """Every ``(type, field)`` of the protocol, with the wire names of both."""
    return {(code(t), code(f)) for t in P.MESSAGES for f in P.fields_of(t)}


@pytest.mark.timeout(10)
def test_every_message_type_and_each_of_its_fields_has_a_row_in_the_message_table():
    assert P.MESSAGES and all(P.fields_of(t) for t in P.MESSAGES)
    documented = {(cells[0], cells[2]) for cells in rows(section("Messages"))}
    missing = sorted(f"{t}.{f}" for t, f in message_fields() - documented)
    assert not missing, f"not in the message table of docs/ARCHITECTURE.md: {missing}"


@pytest.mark.timeout(10)
def test_the_message_table_names_no_type_or_field_the_protocol_lacks():
    known = message_fields()
    extra = [f"{t}.{f}" for t, _, f, *_ in rows(section("Messages")) if (t, f) not in known]
    assert not extra, f"documented but not in protocol.MESSAGES: {extra}"


@pytest.mark.timeout(10)
def test_the_status_row_in_a_heartbeat_is_documented_field_by_field():
    table = {(cells[0], cells[2]): cells for cells in rows(section("Messages"))}
    meaning = table[code(P.HEARTBEAT), code("status")][4]
    assert code("ServerStatus") in meaning
    fields = [f.encode_name for f in msgspec.structs.fields(P.ServerStatus)]
    missing = [name for name in fields if code(name) not in meaning]
    assert not missing, f"HB status: fields of ServerStatus not documented: {missing}"


@pytest.mark.timeout(10)
def test_every_route_is_documented_with_exactly_the_types_it_accepts():
    routes = {name: value for name, value in vars(P).items() if isinstance(value, P.Route)}
    table = {cells[0]: cells for cells in rows(section("Typed messages"))}
    assert routes and set(table) == {code(name) for name in routes}
    for name, route in routes.items():
        accepted = names_in(table[code(name)][-1])
        assert sorted(accepted) == sorted(route.accepts), \
            f"{name} is documented to accept {accepted}, but accepts {sorted(route.accepts)}"


@pytest.mark.timeout(10)
def test_the_diagram_and_the_port_table_name_only_real_message_types():
    text = DOC.read_text()
    diagram = re.search(r"```mermaid\n(.*?)```", text, re.S)[1]
    labels = re.findall(r'--\s*"([^"]*)"\s*-->', diagram)
    named = {word for label in labels for word in re.findall(r"\b[A-Z][A-Z_]+\b", label)}
    assert named, "the diagram's arrows name no message types"
    assert not named - set(P.MESSAGES), f"not message types: {sorted(named - set(P.MESSAGES))}"
    carried = {name for cells in rows(section("Services and sockets"))
               for name in names_in(cells[-1])}
    assert carried and not carried - set(P.MESSAGES), \
        f"the port table carries no such types: {sorted(carried - set(P.MESSAGES))}"


@pytest.mark.timeout(10)
def test_every_client_operation_is_documented_with_its_arguments_and_kind():
    table = {cells[0]: cells for cells in rows(section("Client operations"))}
    kinds = {**{op: "write" for op in P.WRITE_OPS}, **{op: "read" for op in P.READ_OPS},
             **{op: "broker" for op in P.BROKER_OPS}}
    assert set(table) == {code(op) for op in P.OP_ARGS}
    for op, args in P.OP_ARGS.items():
        assert isinstance(args, tuple) and all(isinstance(a, str) for a in args)
        _, arguments, kind, _meaning = table[code(op)]
        assert names_in(arguments) == list(args), \
            f"{op}: arguments documented as {names_in(arguments)}, but it takes {list(args)}"
        assert args or arguments == "none", f"{op} takes no arguments: say 'none'"
        assert kind == kinds[op], f"{op} is documented as {kind!r}, but it is a {kinds[op]}"


@pytest.mark.timeout(10)
def test_every_event_field_and_kind_is_documented_with_its_data():
    table = {cells[0]: cells for cells in rows(section("Events"))}
    assert isinstance(P.EVENT_FIELDS, tuple)
    for name in P.EVENT_FIELDS:
        assert code(name) in table, f"event field {name!r} not documented"
    assert set(P.EVENT_DATA) == P.EVENT_KINDS
    for kind in P.EVENT_KINDS:
        assert code(kind) in table, f"event kind {kind!r} not documented"
        data = P.EVENT_DATA[kind]
        assert isinstance(data, tuple)
        assert names_in(table[code(kind)][1]) == list(data), \
            f"{kind} event: data documented as {names_in(table[code(kind)][1])}, not {list(data)}"
        assert data or table[code(kind)][1] == "none", f"{kind} carries no data: say 'none'"
    assert set(table) == {code(n) for n in P.EVENT_FIELDS} | {code(k) for k in P.EVENT_KINDS}


@pytest.mark.timeout(10)
def test_every_error_code_and_the_diagram_are_there():
    text = DOC.read_text()
    codes = [getattr(P, name) for name in dir(P) if name.startswith("ERR_")]
    assert codes and all(code(c) in text for c in codes)
    assert "```mermaid" in text


def layout_modules() -> set[str]:
    """The paths of the ``.py`` files in README's Layout tree (a folder's lines are
    indented two spaces under it)."""
    match = re.search(r"^## Layout\s*$.*?^```\n(.*?)^```", README.read_text(), re.M | re.S)
    assert match, "README.md has no '## Layout' section with a tree"
    paths, folders = set(), []
    for line in filter(str.strip, match[1].splitlines()):
        name, depth = line.split()[0], (len(line) - len(line.lstrip())) // 2
        del folders[depth:]
        if name.endswith("/"):
            folders.append(name)
        elif name.endswith(".py"):
            paths.add("".join(folders) + name)
    return paths


@pytest.mark.timeout(10)
def test_the_readme_layout_has_a_line_for_every_module_and_none_for_a_missing_one():
    modules = {p.relative_to(ROOT).as_posix() for package in PACKAGES
               for p in (ROOT / package).rglob("*.py") if p.name != "__init__.py"}
    listed = layout_modules()
    assert not modules - listed, f"not in README.md's Layout: {sorted(modules - listed)}"
    assert not listed - modules - {"run_all.py"}, \
        f"in README.md's Layout but not in the code: {sorted(listed - modules - {'run_all.py'})}"
