"""The transport options every TCP socket of the system gets: ZMTP heartbeats and
quick redials, so that a link healed after a partition carries traffic again within
a second (issue 13).

Without them a partition that drops packets (no RST) leaves each TCP connection
open, its retransmissions backing off to seconds apart, and a dial made meanwhile
waits for the kernel's SYN retries (1, 3, 7 s). With them a connection silent for
``zmq_heartbeat_timeout`` after a PING is closed, the connecting side redials every
``zmq_reconnect_ivl``..``zmq_reconnect_ivl_max`` ms and gives a dial up after
``zmq_connect_timeout``. The values are in ``common/config.py`` (milliseconds).

Set before ``bind``/``connect`` (ZeroMQ applies them to the connections made
afterwards). They change nothing for CURVE (the handshake runs on each new
connection, as after any reconnect), ROUTER_HANDOVER (a redial under the same
identity takes its route over, as it is meant to) or the XPUB/XSUB proxy (its
subscribers' SUBs resubscribe on every reconnect).
"""
from __future__ import annotations

import math

import zmq

from common.config import Config


def transport_options(config: Config) -> dict[int, int]:
    """The option -> value pairs ``tune`` sets (ZeroMQ's ms)."""
    return {zmq.HEARTBEAT_IVL: config.zmq_heartbeat_ivl,
            zmq.HEARTBEAT_TIMEOUT: config.zmq_heartbeat_timeout,
            zmq.HEARTBEAT_TTL: config.zmq_heartbeat_ttl,
            zmq.RECONNECT_IVL: config.zmq_reconnect_ivl,
            zmq.RECONNECT_IVL_MAX: config.zmq_reconnect_ivl_max,
            zmq.CONNECT_TIMEOUT: config.zmq_connect_timeout}


def tune(sock: zmq.Socket, config: Config) -> zmq.Socket:
    """Give ``sock`` the heartbeat and redial options; returns it, for chaining."""
    for option, value in transport_options(config).items():
        sock.setsockopt(option, value)
    return sock


def poll_ms(seconds: float) -> int:
    """A poll timeout of ``seconds`` in ZeroMQ's whole milliseconds, rounded up. zmq_poll
    truncates a fraction, so a wait of 0.4 ms would be a poll of 0: a loop waiting for a
    deadline less than a millisecond away spun on it, a busy CPU for nothing."""
    return math.ceil(max(0.0, seconds) * 1000)
