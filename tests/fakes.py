"""Stand-ins shared by the unit tests of the pure-logic server modules."""
from __future__ import annotations


class NoteLog:
    """Stands in for ProcessLog: keeps the notes."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, what: str, level: str = "INFO") -> None:
        self.lines.append(what)

    def has(self, fragment: str) -> bool:
        return any(fragment in line for line in self.lines)
