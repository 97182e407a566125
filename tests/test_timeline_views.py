"""Issue 15: a timeline people can read -- ``run_all.py timeline`` with ``--compact``,
``--only``, ``--user``, ``--hide``, ``--since``/``--until`` and ``--order``, on the logs
of a small cluster's run (real processes)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from common.processes import ROOT
from common.timeline import LogFolder, View, kind_of, message_type
from tests.harness import Cluster

ACKED = re.compile(r"\| recv server-\d+ \| (?:register|login|post|follow|unfollow|dm) ok "
                   r"rid=(\S+)")
"""A user's write acknowledged, in its client's log."""


def timeline(cluster: Cluster, *args: str) -> list[str]:
    done = subprocess.run([sys.executable, "run_all.py", "timeline", "--log-dir",
                           cluster.config.log_dir, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """A cluster's logs after users wrote (stopped: the logs are complete)."""
    cluster = Cluster(tmp_path_factory.mktemp("views") / "cluster")
    try:
        cluster.start(3)
        cluster.wait_serving({1, 2, 3})
        cluster.cli("alice", "post", "hello, views")
        cluster.cli("bob", "follow", "alice")
        cluster.cli("bob", "dm", "alice", "hi alice")
        cluster.cli("alice", "post", "second post")
        cluster.cli("carol", "feed")
    finally:
        cluster.stop()
    return cluster


def acked_writes(cluster: Cluster) -> set[str]:
    text = "".join(p.read_text() for p in cluster.folder.glob("logs/client-*.log"))
    return set(ACKED.findall(text))


@pytest.mark.timeout(120)
def test_compact_writes_is_one_line_per_acknowledged_write(ran: Cluster):
    lines = timeline(ran, "--compact", "--only", "writes")
    acked = acked_writes(ran)
    assert len(acked) >= 7                    # 3 sign-ups, 3 logins at least, 4 writes
    assert len(lines) == len(acked), "\n".join(lines)
    shown = {m.group(1) for line in lines if (m := re.search(r"\| write \| \w+ (\w{4}) by ", line))}
    assert shown == {rid[:4] for rid in acked}
    post = [line for line in lines if " | write | post " in line]
    assert len(post) == 2 and all(re.search(r"post \w{4} by alice held by 3 in [\d.]+ ms$", p)
                                  for p in post)


@pytest.mark.timeout(120)
def test_filters_keep_only_what_was_asked(ran: Cluster):
    entries = LogFolder(ran.config.log_dir).read_new()
    everything = timeline(ran)
    assert len(everything) == len(entries)

    bob = timeline(ran, "--user", "bob")
    assert bob and all("client-bob" in line or re.search(r"(?<![\w-])bob(?![\w-])", line)
                       for line in bob)
    assert not any("| client-alice |" in line for line in bob)

    hidden = timeline(ran, "--hide", "HB,beat,ACK")
    assert len(hidden) < len(everything)
    assert not any(re.search(r"\| (?:send|recv) \S+ \| (?:HB|BEAT|ACK) ", line) for line in hidden)

    for kind in ("election", "clock", "membership"):
        picked = View(only=kind).apply(entries)
        assert picked, kind
        assert all(kind_of(e, set()) == kind for e in picked)
    assert {message_type(e) for e in View(only="clock").apply(entries)} >= {"TIME_QUERY",
                                                                           "TIME_ADJUST"}

    times = [line[:26] for line in everything]
    middle = times[len(times) // 2][11:19]             # HH:MM:SS of the middle line
    since = timeline(ran, "--since", middle)
    until = timeline(ran, "--until", middle)
    assert since and until and len(since) + len(until) >= len(everything)
    assert all(line[11:19] >= middle for line in since)
    assert all(line[11:19] <= middle for line in until)
    last_second = timeline(ran, "--since", "-1s")
    assert 0 < len(last_second) < len(everything)


@pytest.mark.timeout(120)
def test_time_order_is_the_default_and_lamport_order_is_offered(ran: Cluster):
    by_time = timeline(ran)
    # causes first, whatever the clocks: each request's trail in the order it went
    for rid in acked_writes(ran):
        trail = [next(i for i, line in enumerate(by_time) if all(w in line for w in words))
                 for words in ((f"| send broker | ", f" rid={rid}"), ("| broker | route ", f" rid={rid}"),
                               ("| server-", f"| recv ", f" rid={rid}"),
                               ("| server-", f"| send ", f"| reply rid={rid} ok"))]
        assert trail == sorted(trail), [by_time[i] for i in trail]
    # and otherwise by time: lines out of time order are few (a clock behind, pushed)
    times = [line[:26] for line in by_time]
    assert sum(a > b for a, b in zip(times, times[1:])) < len(times) // 4
    # a fresh user's first command (L=1) sits where it happened, not at the top
    first_of_bob = next(i for i, line in enumerate(by_time) if "| client-bob |" in line)
    assert first_of_bob > 0 and "L=1 |" in by_time[first_of_bob]
    assert any("| server-" in line for line in by_time[:first_of_bob])
    by_lamport = timeline(ran, "--order", "lamport")
    stamps = [int(re.search(r"\| L=(\d+) \|", line).group(1)) for line in by_lamport]
    assert stamps == sorted(stamps) and sorted(by_lamport) == sorted(by_time)


@pytest.mark.timeout(30)
def test_a_bad_option_is_one_line_in_our_words(ran: Cluster):
    for args in (["--only", "posts"], ["--since", "yesterday"], ["--order", "random"],
                 ["--compact", "--follow"]):
        done = subprocess.run([sys.executable, "run_all.py", "timeline", "--log-dir",
                               ran.config.log_dir, *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 2 and done.stderr.startswith("error: "), (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(30)
def test_the_broker_logs_each_reply_to_the_user_by_name(ran: Cluster):
    broker = (ran.folder / "logs" / "broker.log").read_text()
    replies = re.findall(r"\| reply server-\d+->(\S+) \| REP rid=", broker)
    assert replies and set(replies) <= {"alice", "bob", "carol"}, set(replies)


# --- --since / --until, without processes ------------------------------------------------------
@pytest.mark.timeout(10)
def test_since_and_until_take_clock_times_full_times_and_durations_across_midnight():
    from datetime import datetime
    from common.timeline import parse_when
    first, last = datetime(2026, 12, 1, 23, 59, 30), datetime(2026, 12, 2, 0, 0, 40)
    assert parse_when("-10s", first, last) == datetime(2026, 12, 2, 0, 0, 30)
    assert parse_when("+10s", first, last) == datetime(2026, 12, 1, 23, 59, 40)
    # a clock time is taken on the day it falls within the logs, before or after midnight
    assert parse_when("23:59:45", first, last) == datetime(2026, 12, 1, 23, 59, 45)
    assert parse_when("00:00:10.5", first, last) == datetime(2026, 12, 2, 0, 0, 10, 500000)
    assert parse_when("2026-12-01 23:59:50", first, last) == datetime(2026, 12, 1, 23, 59, 50)
    assert parse_when("2026-12-02T00:00:01.25", first, last) == \
        datetime(2026, 12, 2, 0, 0, 1, 250000)
    assert parse_when("12:00:00", first, last) == datetime(2026, 12, 2, 12, 0)  # outside: last day
    with pytest.raises(ValueError, match="neither a time"):
        parse_when("noon", first, last)
