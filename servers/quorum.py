"""Quorum: who the members are, and whether this server reaches a majority of them.

The **membership** is the servers that joined (a BEAT of theirs was heard, in any
phase but leaving or halted) and have not left (BYE) or been removed. It decides
two things:

* ``majority()``: no write is acknowledged with fewer copies than a majority of the
  members (``replication.copies_required``), so any two acknowledged writes share
  a server that holds both, whatever partitions came between;
* ``reachable(now)``: the members I hear, me included. With fewer than a majority I
  acknowledge no write (the user is told ``unavailable: 1 of 3 servers reachable``
  at once) and claim no coordinatorship (``election.py``).

**Removal for silence needs a majority.** Every BEAT says which members its sender
hears (``hears``). A member silent to me is removed once a majority of the members
agree: I count myself, and every member I hear whose last BEAT did not list it. A
minority -- one server cut off, or two of five -- can never gather that many, so it
never shrinks the membership for itself and never lowers the copies it needs; the
majority side removes the silent ones and goes on with the copies that are left.

The member list is kept beside the data folder (``data/server-N.members``, through
``save``): a server that restarts alone still knows it is one of three, and waits
for a majority instead of serving by itself. While joining it also adopts the
members its peers name (it may have lost that file with its folder).

Pure logic: no sockets, no clock reads, no files; ``now`` is ``time.monotonic()``.
"""
from __future__ import annotations

from typing import Callable, Iterable

from common.log import ProcessLog


def majority(members: int) -> int:
    """The smallest number of members that is more than half of them."""
    return members // 2 + 1


class Quorum:
    def __init__(self, my_id: int, window: float, *, members: Iterable[int] = (),
                 save: Callable[[list[int]], None] | None = None,
                 log: ProcessLog | None = None) -> None:
        self.my_id = my_id
        self.window = window
        """A member heard within this many seconds is reachable (``peer_timeout``)."""
        self.members: set[int] = {my_id, *members}
        self.heard: dict[int, float] = {}           # member -> last heard (monotonic)
        self.views: dict[int, frozenset[int]] = {}  # member -> whom its last BEAT heard
        self.learning = True
        """While joining: the members my peers name are members (my file may be lost)."""
        self._save = save or (lambda members: None)
        self._log = log
        self.removed = 0                            # removals for silence, for status

    # --- what the server reads -----------------------------------------------------
    def majority(self) -> int:
        return majority(len(self.members))

    def hears(self, now: float) -> list[int]:
        """The members I heard within ``window``, me included (what my BEAT says)."""
        return sorted(m for m in self.members if m == self.my_id or self._fresh(m, now))

    def reachable(self, now: float, window: float | None = None) -> int:
        return sum(1 for m in self.members
                   if m == self.my_id or self._fresh(m, now, window))

    def has_majority(self, now: float, window: float | None = None) -> bool:
        return self.reachable(now, window) >= self.majority()

    def short_of_majority(self, now: float) -> str | None:
        """None with a majority in reach; else what users are told, ``1 of 3 servers
        reachable``."""
        reachable = self.reachable(now)
        if reachable >= self.majority():
            return None
        return f"{reachable} of {len(self.members)} servers reachable"

    # --- what the server tells it ---------------------------------------------------
    def heard_from(self, sender: int, now: float) -> None:
        """Any bus message of a member proves it alive."""
        if sender in self.members:
            self.heard[sender] = max(self.heard.get(sender, now), now)

    def on_view(self, sender: int, phase_active: bool, members: Iterable[int],
                hears: Iterable[int], now: float) -> None:
        """A peer's BEAT: it is a member while active (joining, syncing, serving), it
        hears ``hears``, and (while I am learning) its ``members`` are members."""
        if phase_active and sender not in self.members:
            self._add(sender, "joined")
        if sender not in self.members:
            return
        self.heard[sender] = max(self.heard.get(sender, now), now)
        self.views[sender] = frozenset(hears)
        if self.learning:
            for member in members:
                if member not in self.members:
                    self._add(member, f"named a member by server-{sender}")

    def left(self, sender: int) -> None:
        """A BYE: it leaves the membership at once (it left in good order)."""
        if sender in self.members and sender != self.my_id:
            self._remove(sender, "said BYE")

    def learned(self) -> None:
        """Joining is over: from now on only a server's own BEAT makes it a member."""
        self.learning = False

    def sweep(self, now: float) -> list[int]:
        """Remove the silent members a majority agrees are silent; returns them."""
        removed = []
        for member in sorted(self.members):
            if member == self.my_id or self._fresh(member, now):
                continue
            agree = 1 + sum(1 for other in self.members
                            if other not in (self.my_id, member) and self._fresh(other, now)
                            and other in self.views and member not in self.views[other])
            if agree >= self.majority():
                self._remove(member, f"silent, and {agree} of {len(self.members)} members "
                                     f"agree")
                self.removed += 1
                removed.append(member)
        return removed

    # --- helpers --------------------------------------------------------------------
    def _fresh(self, member: int, now: float, window: float | None = None) -> bool:
        heard = self.heard.get(member)
        return heard is not None and now - heard < (self.window if window is None else window)

    def _add(self, member: int, why: str) -> None:
        self.members.add(member)
        self._changed(f"server-{member} is a member ({why})")

    def _remove(self, member: int, why: str) -> None:
        self.members.discard(member)
        self.heard.pop(member, None)
        self.views.pop(member, None)
        self._changed(f"server-{member} is no longer a member ({why})")

    def _changed(self, what: str) -> None:
        members = sorted(self.members)
        if self._log is not None:
            self._log.note(f"membership: {what}; members {', '.join(f's{m}' for m in members)}, "
                           f"majority {self.majority()}")
        self._save(members)
