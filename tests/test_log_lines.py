"""Issue 15: the log lines tools read are formats with one parser (common/log_lines.py),
and a server's Lamport clock survives its restarts (servers/lamport_file.py)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import log_lines as LL
from common import protocol as P
from common.clock import PhysicalClock
from common.log import ProcessLog, brief, data_brief, event_brief
from servers.lamport_file import RESERVE, DurableLamportClock, LamportFile

HEAD = "2026-12-02 05:00:00.000001 | L=42 | server-1 | "


# --- formats and the parser ------------------------------------------------------------------
@pytest.mark.timeout(10)
@pytest.mark.parametrize("fmt, fields", [
    (LL.CLAIM, {"epoch": "103"}),
    (LL.FOLLOW, {"coordinator": "3", "epoch": "103"}),
    (LL.ADJUSTED, {"delta_ms": "+0.011", "round": "4", "coordinator": "3"}),
    (LL.FETCHED, {"events": "10", "new": "3", "more": "False"}),
    (LL.STARTED, {"events": "7", "folder": "/tmp/a folder/data/server-1"}),
    (LL.CAUGHT_UP, {"events": "12", "digest": "0a1b2c3d4e5f"}),
    (LL.READY, {"count": "3"}),
    (LL.CLOCK_SET, {"step_ms": "-0.3", "source": "server-3 (coordinator, epoch 103, rtt 0.4 ms)"}),
    (LL.CLOCK_CORRECTED, {"step_ms": "+50.0", "off_ms": "+312.1", "source": "server-3 (epoch 103)"}),
    (LL.CHAOS_JUMP, {"jump_ms": "-512.3"}),
    (LL.LAMPORT_START, {"lamport": "2000", "stored": "2000"}),
    (LL.ROUND, {"number": "2", "epoch": "103", "readings": "s1=+0.0ms s2=+1.0ms(rtt 0.3ms)",
                "median": "+0.5ms", "excluded": "s3 +900.0ms", "avg": "+0.4ms",
                "corrections": "s1=+0.4ms s2=-0.6ms"}),
])
def test_every_format_reads_back_what_it_wrote(fmt, fields):
    runs_to_the_end = fmt.endswith(("{source}", "{why}"))     # a last field of any text
    line = HEAD + "local - | " + fmt.format(**fields) + \
        ("" if runs_to_the_end else " and what follows; (x)")
    assert LL.parse(fmt, line) == fields
    assert LL.parse_all(fmt, line + "\n" + line) == [fields, fields]


@pytest.mark.timeout(10)
def test_a_format_matches_only_where_a_field_of_the_line_starts():
    own = HEAD + "local - | " + LL.PHASE.format(old="syncing", new="serving", why="caught up")
    heard = HEAD + "recv server-2 | phase syncing -> serving"
    assert LL.parse(LL.SERVING, own) == {"old": "syncing", "why": "caught up"}
    assert LL.parse(LL.SERVING, heard) is None           # a peer's phase, not this server's
    assert LL.parse(LL.CLAIM, HEAD + "local - | not I am coordinator (epoch 1)") is None
    # a format told inside another: the reason of a phase change
    why = LL.CAUGHT_UP.format(events=709, digest="68993b08bee6") + "pulled 12 events"
    line = HEAD + "local - | " + LL.PHASE.format(old="syncing", new="serving", why=why)
    assert LL.parse(LL.CAUGHT_UP, line) == {"events": "709", "digest": "68993b08bee6"}


@pytest.mark.timeout(10)
def test_a_process_log_says_each_chaos_jump_of_its_clock_in_ms(tmp_path):
    clock = PhysicalClock(chaos=True, chaos_interval=(0.0, 0.0))
    log = ProcessLog("client-alice", tmp_path / "client-alice.log", DurableLamportClock(), clock)
    log.note("hello")
    log.close()
    text = (tmp_path / "client-alice.log").read_text()
    jumps = LL.parse_all(LL.CHAOS_JUMP, text)
    assert jumps and all(abs(float(j["jump_ms"])) <= 1000.0 for j in jumps)


# --- the server's Lamport ceiling -------------------------------------------------------------
def clock_on(path) -> DurableLamportClock:
    clock = DurableLamportClock()
    clock.attach(LamportFile(path))
    return clock


@pytest.mark.timeout(10)
def test_a_restarted_clock_continues_above_every_stamp_it_used(tmp_path):
    path = tmp_path / "server-1.lamport"
    first = clock_on(path)
    used = [first.tick() for _ in range(2500)] + [first.merge(7000)]
    first.close()                                  # a kill: nothing more is written
    again = clock_on(path)
    assert again.tick() > max(used)
    assert LamportFile(path).read() >= max(used)


@pytest.mark.timeout(10)
def test_the_ceiling_is_on_disk_before_a_stamp_passes_it(tmp_path):
    path = tmp_path / "server-1.lamport"
    clock = clock_on(path)
    for _ in range(3 * RESERVE):
        stamp = clock.tick()
        assert LamportFile(path).read() >= stamp
    stamp = clock.merge(10 ** 9)                    # a jump far ahead (a peer's stamp)
    assert LamportFile(path).read() >= stamp
    writes_before = clock.ceiling
    clock.tick()
    assert clock.ceiling == writes_before           # one write per RESERVE stamps, not per tick
    clock.close()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage", "huge"])
def test_a_damaged_ceiling_is_refused_never_read_as_a_lower_clock(tmp_path, damage):
    path = tmp_path / "server-1.lamport"
    clock = clock_on(path)
    for _ in range(5000):
        clock.tick()
    clock.close()
    raw = path.read_bytes()
    damaged = {"flip": raw[:15] + bytes([raw[15] ^ 0x01]) + raw[16:],   # 5 -> 4: lower, valid digits
               "truncate": raw[:12],
               "empty": b"",
               "garbage": b"\x00" * len(raw),
               "huge": b"9" * 20 + raw[20:]}[damage]
    path.write_bytes(damaged)
    with pytest.raises(ValueError, match=r"server-1\.lamport is damaged .*delete it"):
        LamportFile(path).read()


@pytest.mark.timeout(10)
def test_a_missing_ceiling_starts_the_clock_where_it_was(tmp_path):
    clock = DurableLamportClock()
    clock.merge(41)                                  # what the server's folder held
    assert clock.attach(LamportFile(tmp_path / "server-1.lamport")) == 0
    assert clock.tick() == 43
    clock.close()


_names = st.from_regex(P.USER_RE, fullmatch=True)
_texts = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=300)


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None)
@given(text=st.none() | _texts, target=st.none() | _names, to=st.none() | _names,
       shown=st.none() | st.lists(st.from_regex(P.RID_RE, fullmatch=True), max_size=3),
       hash_=st.none() | st.just("$argon2id$v=19$m=65536,t=3,p=4$abc$def"),
       token=st.none() | st.just("ab" * 32), expires=st.none() | st.floats(0, 1e10))
def test_an_events_data_reads_the_same_in_its_fast_brief(text, target, to, shown, hash_,
                                                         token, expires):
    """``data_brief``, written for speed, says exactly what the generic ``brief`` says."""
    data = P.EventData(text=text, target=target, to=to, shown=shown, hash=hash_,
                       token=token, expires=expires)
    assert data_brief(data, 80) == brief(data, 80)
    if token is not None:
        assert token not in data_brief(data, 200), "a token hash shows cut, never whole"


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None)
@given(text=_texts.filter(str.strip), user=_names, lamport=st.integers(1, 10**12))
def test_a_posts_brief_reads_the_same_on_its_fast_path(text, user, lamport):
    """``event_brief`` of a post (the most common line) skips ``data_brief``: same text."""
    event = P.Event(id="c52170f4e589411d", kind=P.EV_POST, user=user, lamport=lamport,
                    ts=1.7e9, origin=1, seq=9, data=P.EventData(text=text))
    slow = (f"post id={event.id} 1:9 by {user} L={lamport} {data_brief(event.data, 80)}").rstrip()
    assert event_brief(event) == slow


@pytest.mark.timeout(10)
def test_the_lines_of_one_message_are_one_line_each_with_one_stamp(tmp_path):
    from common.clock import LamportClock
    lamport = LamportClock()
    lamport.merge(41)
    log = ProcessLog("server-1", tmp_path / "s.log", lamport, PhysicalClock())
    log.batch("recv", "server-2", ["EVENT a", "EVENT b vv={1:2}"])
    log.batch("recv", "server-2", [])
    log.line("recv", "server-3", "ACK vv={1:2}")
    log.flush()
    got = (tmp_path / "s.log").read_text().splitlines()
    assert [g.split(" | ", 1)[1] for g in got] == [
        "L=42 | server-1 | recv server-2 | EVENT a",
        "L=42 | server-1 | recv server-2 | EVENT b vv={1:2}",
        "L=42 | server-1 | recv server-3 | ACK vv={1:2}"]
    assert got[0].split(" | ")[0] == got[1].split(" | ")[0]      # one moment
    with log.moment():
        log.line("send", "alice", "reply rid=1 ok replicas=3")
        with log.moment():
            log.line("send", "bob", "reply rid=2 ok replicas=3")
        log.warn("under-replicated: 3 acked with 2 of 3 copies")
    log.line("send", "carol", "reply rid=3 ok replicas=3")
    log.flush()
    last = (tmp_path / "s.log").read_text().splitlines()[3:]
    times = [line.split(" | ")[0] for line in last]
    assert len(last) == 4 and times[0] == times[1] == times[2] < times[3]
    assert last[2].endswith("WARNING: under-replicated: 3 acked with 2 of 3 copies")
    log.close()


@pytest.mark.timeout(10)
def test_the_demo_names_the_chaos_jumps_logged_after_the_last_berkeley_round():
    """The demo's summary gives the clock spread 'right after' a round: a chaos jump
    logged after it (in Lamport order) is named with it, one before it is not."""
    from clients.demo.watch import ChaosJumps
    from common.timeline import Entry

    def entry(lamport: int, process: str, rest: str) -> Entry:
        return Entry(lamport, process, f"{process}.log", lamport, "", "", rest)
    jumps = ChaosJumps()
    jumps.note(entry(90, "server-2", "local - | " + LL.CHAOS_JUMP.format(jump_ms="+300.0")))
    jumps.round_at(100)
    jumps.note(entry(101, "server-3", "local - | " + LL.CHAOS_JUMP.format(jump_ms="-120.5")))
    jumps.note(entry(102, "server-3", "recv alice | post rid=1 text='clock chaos'"))
    assert jumps.since_round() == ["server-3 -120.5 ms"]
    jumps.round_at(103)
    assert jumps.since_round() == []
