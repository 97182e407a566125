"""The one guard every handler and periodic job of the broker and the servers runs under."""
from __future__ import annotations

import pytest

from common.clock import LamportClock, PhysicalClock
from common.log import ProcessLog

pytestmark = pytest.mark.timeout(20)


def test_a_handler_that_raises_is_logged_with_its_message_and_the_process_goes_on(tmp_path):
    path = tmp_path / "server-1.log"
    log = ProcessLog("server-1", path, LamportClock(), PhysicalClock())
    seen = []

    def on_bus(frames):
        raise KeyError("no such peer")

    def tick(now):
        seen.append(now)

    log.guard(on_bus, [b"BEAT", b"7", b'{"from":2}'])     # does not raise
    log.guard(tick, 1.5)                                  # and the next job still runs
    log.close()
    text = path.read_text()
    assert seen == [1.5]
    assert "error in on_bus: KeyError: 'no such peer'" in text
    assert "b'BEAT' b'7' b'{\"from\":2}'" in text          # the message that caused it
    assert text.count("WARNING") == 1
