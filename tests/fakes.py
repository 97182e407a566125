"""Stand-ins shared by the unit tests of the pure-logic server modules."""
from __future__ import annotations

import contextlib


class NoteLog:
    """Stands in for ProcessLog: keeps the notes."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, what: str, level: str = "INFO") -> None:
        self.lines.append(what)

    def has(self, fragment: str) -> bool:
        return any(fragment in line for line in self.lines)

    def moment(self):
        return contextlib.nullcontext()


class TalkLog(NoteLog):
    """Stands in for ProcessLog where a role also logs what it sends and receives:
    every line kept, sends and receives prefixed so a test can tell them apart."""

    def send(self, peer: str, what: str) -> None:
        self.lines.append(f"send {peer} | {what}")

    def recv(self, peer: str, what: str) -> None:
        self.lines.append(f"recv {peer} | {what}")

    def batch(self, direction: str, peer: str, whats: list[str]) -> None:
        self.lines.extend(f"{direction} {peer} | {what}" for what in whats)

    def warn(self, what: str) -> None:
        self.lines.append(f"WARNING {what}")


class FakeStore:
    """Stands in for EventStore on the write path: what was appended, and how
    often it was made durable."""

    def __init__(self) -> None:
        self.appended: list = []
        self.syncs = 0

    def append(self, event, raw: bytes | None = None) -> None:
        self.appended.append(event)

    def sync(self) -> None:
        self.syncs += 1
