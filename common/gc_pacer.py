"""Keeping the cyclic garbage collector's pauses off the request path.

CPython's full (generation 2) collection scans every tracked object. A server
holds every event it stores as dicts, so a full collection grows with the
store: measured 20-50 ms with ~10k events under load, long enough to be the
whole p99 at half load. Yet that state is acyclic data, freed by reference
counting; in steady state the collector finds nothing (measured: 0 objects
collected per collection under load).

So a long-running process moves what has survived into the permanent
generation (``gc.freeze``) right after start-up and then once a second: frozen
objects are never scanned again, and a collection only looks at what is
younger than a second. Reference counting still frees frozen objects that die;
only a reference cycle that forms among frozen objects would outlive its use,
and the servers make none on the request path.
"""
from __future__ import annotations

import gc

FREEZE_EVERY = 1.0
"""Seconds between freezes: bounds what a collection scans to a second's objects."""


class GcPacer:
    """Freeze the survivors at start-up and every ``FREEZE_EVERY`` seconds (call
    ``tick`` every loop turn)."""

    def __init__(self, every: float = FREEZE_EVERY) -> None:
        self.every = every
        self.next_at = 0.0

    def settle(self) -> None:
        """After loading state: collect once, then freeze everything that is left."""
        gc.collect()
        gc.freeze()

    def tick(self, now: float) -> None:
        if now >= self.next_at:
            self.next_at = now + self.every
            gc.freeze()
