"""The broker's ``status`` answer as the tools read it (run_all's demo and bench,
the tests): rows by server id, which servers serve, whether they agree, and
waiting until some serve.

A row is what a server last told the broker in its heartbeat; a server's Lamport
clock grows with every heartbeat, so of two rows of one server the one with the
larger clock is the fresher.
"""
from __future__ import annotations

from typing import Callable, Iterable

from common.processes import wait_until

Rows = dict[int, dict]


def rows_by_id(status: dict | None) -> Rows:
    """Status rows by server id (none when there is no status)."""
    return {row["id"]: row for row in (status or {"servers": []})["servers"]}


def serving(rows: Rows) -> Rows:
    """The rows of the servers alive and serving."""
    return {sid: row for sid, row in rows.items()
            if row.get("alive") and row.get("phase") == "serving"}


def lamports(rows: Rows) -> dict[int, int]:
    """Each row's Lamport clock, to tell the rows sent later by (``all_newer``)."""
    return {sid: row.get("lamport", -1) for sid, row in rows.items()}


def all_newer(rows: Rows, since: dict[int, int]) -> bool:
    """Every row was sent after the rows whose ``lamports`` are ``since``."""
    return all(row.get("lamport", -1) > since.get(sid, -1) for sid, row in rows.items())


def same_events(rows: Rows) -> bool:
    """Every row holds the same events: the same digest and count."""
    return len({(row.get("digest"), row.get("events")) for row in rows.values()}) == 1


def wait_serving(rows_of: Callable[[], Rows], ids: Iterable[int], timeout: float,
                 interval: float = 0.1) -> Rows:
    """Poll ``rows_of`` until servers ``ids`` all serve; the serving rows then."""
    ids = sorted(ids)

    def all_serving():
        rows = serving(rows_of())
        return rows if set(ids) <= set(rows) else None
    return wait_until(all_serving, timeout, interval=interval, what=f"servers {ids} serving")
