"""The transport options (common/sockets.py) and their rules (common/config.py)."""
from __future__ import annotations

import dataclasses

import pytest
import zmq

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
