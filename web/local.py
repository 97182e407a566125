"""Starting the gateway next to a cluster on this machine (``run_all.py up`` and
``demo``, the tests, the screenshots and the benchmark): a port, the process, and
waiting until it answers."""
from __future__ import annotations

import http.client
import socket
import time

from common.processes import ProcessGroup

NAME = "web"
READY_TIMEOUT = 15.0


def usable_port(preferred: int, bind: str = "127.0.0.1") -> int:
    """``preferred`` if nothing listens on it, else a free port the OS picks."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind((bind, port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise OSError("no free TCP port")


def start(group: ProcessGroup, port: int, *extra: str):
    """``python -m web --port PORT`` in ``group`` (its cluster's environment)."""
    return group.start(NAME, ["web", "--port", str(port), *extra])


def wait_ready(port: int, timeout: float = READY_TIMEOUT, host: str = "127.0.0.1",
               alive=lambda: True) -> None:
    """Until ``GET /`` answers 200 (TimeoutError after ``timeout``; RuntimeError as
    soon as ``alive()`` says the process has exited)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=1.0)
            conn.request("GET", "/")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        if not alive():
            raise RuntimeError(f"the gateway on port {port} exited")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the gateway on port {port} did not answer within {timeout:g} s")
        time.sleep(0.05)
