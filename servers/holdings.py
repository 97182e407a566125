"""What a server holds on disk: its data folder and the files beside it, at start-up,
after each fold, and at the end.

The folder (``store.py``: the write-ahead log folded into TinyDB) sits beside three
small files of the same server: the member list it last knew (``members_file.py``),
the Lamport ceiling it reserved (``lamport_file.py``) and the highest seq it ever
issued (``issued.py``). The server makes each of them in its own order (the member
list and the ceiling first: a damaged one stops the server before it touches
anything; the folder locked before the log file is opened), and hands them here.

At start-up ``load`` reads the folder back and says in the log what was wrong with
it: a problem a line, each record set aside in ``rejected.jsonl``, the records that
carry no checksum, a ``db.tmp`` left by a fold cut short. Once the events are
applied, ``begin`` checks them against the issued seq (fewer of my own than I
issued: I sync them back before serving), probes the folder, records the issued
seq, and starts the Lamport clock above every stamp held or used before. A
``DiskError`` on the way is returned, not raised: the server halts at once and
never serves on a disk that cannot hold (``disk_watch.py``).

After start-up: ``checkpoint`` starts a fold when one is due and says how the
finished ones went (a failed fold changes nothing and is tried again; a lost
checkpointer is said once), ``save_members`` keeps a changed membership,
``repaired`` removes the marker of a damaged folder once a peer gave back what it
lost, ``close`` closes them all.

It holds no reference to the server: it is given the files, the Lamport clock and
the log.
"""
from __future__ import annotations

from common import log_lines as LL
from common.log import ProcessLog
from servers.disk_error import DiskError


class Holdings:
    """One server's data folder (``EventStore``) and the files beside it."""

    def __init__(self, store, issued, members_file, lamport_file, lamport,
                 log: ProcessLog) -> None:
        self.store = store
        self.issued = issued
        self.members_file = members_file
        self.lamport_file = lamport_file
        self.lamport = lamport
        self.log = log

    def load(self) -> list:
        """The folder's events, read back; what was wrong with it said in the log."""
        events = self.store.load()
        for problem in self.store.problems:
            self.log.warn(problem)
        for problem in self.store.rejected:
            self.log.warn(f"stored record set aside in {self.store.folder / 'rejected.jsonl'}: "
                          f"{problem}")
        if self.store.unverified:
            files = ", ".join(f"{name} {n}" for name, n in sorted(self.store.unverified.items()))
            self.log.note(f"{sum(self.store.unverified.values())} stored records carry no "
                          f"checksum (written before checksums), loaded unverified: {files}")
        if self.store.stale_tmp:
            self.log.note(f"removed {self.store.folder / 'db.tmp'}, left by a fold cut short "
                          f"(db.json and the log segments hold every event)")
        return events

    def begin(self, mine: int, events: list, check) -> DiskError | None:
        """The folder loaded and applied (``mine``: my own events it held): the issued
        seq and the Lamport clock taken up; the failure that halts me, if any
        (``check``: whether the folder takes a write now)."""
        if mine < self.issued.highest:
            self.log.warn(f"my folder holds my own events up to seq {mine}, but I issued up to "
                          f"{self.issued.highest}: I sync them back from a peer before serving "
                          f"(if none ever held them, delete {self.issued.path} to go on from "
                          f"what the peers hold)")
        failure = self.store.failed or check()
        if failure is None:
            try:
                self.issued.record(mine)         # data from before this file existed
            except DiskError as exc:
                failure = exc
        # Lamport rule on restart: never stamp below what we already hold, nor below
        # any stamp this server used before (the ceiling in data/server-N.lamport)
        self.lamport.merge(max((e.lamport for e in events), default=0))
        if failure is None:
            try:
                stored = self.lamport.attach(self.lamport_file)
                self.log.note(LL.LAMPORT_START.format(lamport=self.lamport.value,
                                                      stored=stored)
                              + f"reserved up to {self.lamport.ceiling} in "
                              f"{self.lamport_file.path})")
            except DiskError as exc:
                failure = exc
        return failure

    def checkpoint(self, idle: float, idle_s: float) -> None:
        """A fold if one is due (``DiskError``: no new log segment, nothing more is
        held), and how the finished ones went, said in the log."""
        self.store.maybe_checkpoint(idle, idle_s)
        for folded, seconds in self.store.finished():
            self.log.note(f"checkpoint: {folded} events folded into TinyDB "
                          f"({self.store.stored} stored) in {seconds * 1000:.0f} ms")
        if self.store.fold_failed:
            self.log.warn(f"checkpoint failed: {self.store.fold_failed}; db.json and the log "
                          f"segments are as they were (nothing lost): trying again in "
                          f"{self.store.retry_s:g} s")
            self.store.fold_failed = None
        if self.store.lost:
            self.log.warn(self.store.lost)
            self.store.lost = None

    def save_members(self, members: list[int]) -> None:
        """The membership changed: kept beside my folder (a warning if it cannot be:
        the next start learns it again from the peers)."""
        try:
            self.members_file.write(members)
        except DiskError as exc:
            self.log.warn(f"cannot keep the member list: {exc}")

    def repaired(self) -> None:
        """A peer gave back what my damaged folder lost: the marker goes (if it cannot,
        the next start only syncs again before serving)."""
        try:
            self.store.repaired()
        except OSError as exc:
            self.log.warn(f"cannot remove {self.store.marker} ({exc.strerror}): the next "
                          f"start syncs from a peer again before serving")

    def close(self) -> None:
        self.store.close()
        self.issued.close()
        self.lamport.close()
