"""Fixtures for tests that run real clusters (see tests/harness.py)."""
from __future__ import annotations

import signal

import pytest

from tests.harness import Cluster


def pytest_configure(config):
    """Ctrl-C reaches the programs the tests start, as in a terminal. Started in the
    background by a shell (``.ci/run &``, ``nohup``), pytest finds SIGINT ignored,
    and an ignored signal stays ignored in every child: the tests that stop a
    listener, the demo or ``timeline --follow`` with SIGINT would hang. A handled
    signal is reset to the default at exec, so handling it here gives every child
    Python's usual KeyboardInterrupt."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can see a failure."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _failed(request) -> bool:
    return any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
               for when in ("setup", "call"))


@pytest.fixture
def make_cluster(tmp_path, request):
    """A factory of clusters, each in its own folder on its own ports; all stopped at the end.

    When the test failed, the tail of every process's log is printed."""
    clusters: list[Cluster] = []

    def make(name: str = "cluster", env: dict | None = None, **options) -> Cluster:
        cluster = Cluster(tmp_path / name, env, **options)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()
    if _failed(request):
        for cluster in clusters:
            print(f"\n===== logs of {cluster.folder.name} (port base "
                  f"{cluster.config.port_base}) =====")
            print(cluster.log_tails())


@pytest.fixture
def cluster(make_cluster) -> Cluster:
    """A cluster not yet started: call ``cluster.start()``."""
    return make_cluster()


@pytest.fixture
def running(cluster) -> Cluster:
    """Broker and servers 1..3, all serving."""
    cluster.start(3)
    cluster.wait_serving({1, 2, 3})
    return cluster
