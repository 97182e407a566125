"""The transport options (common/sockets.py) and their rules (common/config.py)."""
from __future__ import annotations

import dataclasses
import time

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from common import sockets
from common.config import Config, ConfigError

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("kind", [zmq.DEALER, zmq.ROUTER, zmq.PUB, zmq.SUB, zmq.XPUB, zmq.XSUB])
def test_tune_sets_every_heartbeat_and_redial_option_from_the_config(kind):
    config = Config(zmq_heartbeat_ivl=300, zmq_heartbeat_timeout=700, zmq_heartbeat_ttl=1200,
                    zmq_reconnect_ivl=50, zmq_reconnect_ivl_max=400,
                    zmq_connect_timeout=350).validate()
    ctx = zmq.Context()
    try:
        sock = ctx.socket(kind)
        assert sockets.tune(sock, config) is sock
        got = {opt: sock.getsockopt(opt) for opt in sockets.transport_options(config)}
        sock.close(0)
    finally:
        ctx.term()
    assert got == {zmq.HEARTBEAT_IVL: 300, zmq.HEARTBEAT_TIMEOUT: 700,
                   zmq.HEARTBEAT_TTL: 1200, zmq.RECONNECT_IVL: 50,
                   zmq.RECONNECT_IVL_MAX: 400, zmq.CONNECT_TIMEOUT: 350}


def test_defaults_redial_a_healed_link_well_within_a_second():
    config = Config().validate()
    assert config.zmq_connect_timeout + config.zmq_reconnect_ivl_max < 1000
    assert config.zmq_heartbeat_timeout < 1000 * config.server_timeout


@pytest.mark.parametrize("changes", [
    {"zmq_heartbeat_ivl": 0},
    {"zmq_heartbeat_ivl": 900, "zmq_heartbeat_timeout": 900},
    {"zmq_heartbeat_timeout": 1500, "zmq_heartbeat_ttl": 1000},
    {"zmq_heartbeat_ttl": 7_000_000, "zmq_heartbeat_timeout": 7_000_000},
    {"zmq_reconnect_ivl": 0},
    {"zmq_reconnect_ivl": 500, "zmq_reconnect_ivl_max": 250},
    {"zmq_connect_timeout": 0},
])
def test_impossible_transport_options_are_refused(changes):
    with pytest.raises(ConfigError):
        dataclasses.replace(Config(), **changes).validate()


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=-5.0, max_value=5.0, allow_nan=False))
def test_a_poll_timeout_is_never_shorter_than_the_wait(seconds):
    ms = sockets.poll_ms(seconds)
    assert isinstance(ms, int)
    if seconds <= 0:
        assert ms == 0
    else:
        assert ms - 1 < seconds * 1000 <= ms


def test_a_poll_for_a_deadline_under_a_millisecond_away_waits_for_it():
    """zmq_poll truncates a fraction of a millisecond: 0.4 ms was a poll of 0, and a
    loop waiting for a deadline that close spun on it until it came."""
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.bind("tcp://127.0.0.1:*")
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        for _ in range(20):
            start = time.monotonic()
            assert poller.poll(sockets.poll_ms(0.0004)) == []
            assert time.monotonic() - start >= 0.0004
    finally:
        ctx.destroy(0)
