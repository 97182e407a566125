"""Several requests or replies in one message on the fast path (``REQS``, ``REPS``),
without sockets: how they are cut (``protocol.batches``), how a server's turn packs
its replies (``servers/fast_replies.py``), how the broker logs them (``FastLog``) and
what a decoder refuses."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.fast_path import CapturePace, FastLog
from common import protocol as P
from servers.fast_replies import FastReplies
from tests.hostile_helpers import frames

pytestmark = pytest.mark.timeout(60)


def reply(rid: str, text: str = "") -> P.Reply:
    return P.Reply(rid=rid, ok=True, server=2, time=1.0, result={"text": text})


@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.integers(0, 50), max_size=60), most=st.integers(1, 8),
       most_bytes=st.integers(1, 120))
def test_batches_keep_order_and_bounds(sizes, most, most_bytes):
    items = list(enumerate(sizes))
    runs = P.batches(items, lambda item: item[1], most, most_bytes)
    assert [item for run in runs for item in run] == items, "every item once, in order"
    for run in runs:
        assert 1 <= len(run) <= most
        assert len(run) == 1 or sum(size for _, size in run) <= most_bytes, \
            "only an item alone may pass the byte bound"
    for first, second in zip(runs, runs[1:]):      # a run is cut only when it must be
        assert len(first) == most or sum(s for _, s in first) + second[0][1] > most_bytes


def test_a_turns_replies_go_per_connection_in_order_one_alone_as_a_rep():
    out = FastReplies(batch=3)
    for i in range(5):
        out.add(b"ann", reply(f"a{i}"))
    out.add(b"bob", reply("b0"))
    assert out
    sent = out.take()
    assert not out and out.take() == []
    ann = [(t, json.loads(body)) for route, t, body in sent if route == b"ann"]
    assert [t for t, _ in ann] == [P.REPLIES, P.REPLIES]
    assert [[r["rid"] for r in body["reps"]] for _, body in ann] == [["a0", "a1", "a2"],
                                                                     ["a3", "a4"]]
    [(route, msg_type, body)] = [m for m in sent if m[0] == b"bob"]
    assert msg_type == P.REPLY and json.loads(body)["rid"] == "b0"


def test_a_reply_too_big_to_share_goes_alone_and_every_message_decodes():
    out = FastReplies(batch_bytes=200)
    out.add(b"ann", reply("small-1"))
    out.add(b"ann", reply("big", "x" * 500))
    out.add(b"ann", reply("small-2"))
    sent = out.take()
    assert [t for _, t, _ in sent] == [P.REPLY, P.REPLY, P.REPLY]
    for route, msg_type, body in sent:
        decoded = P.decode([msg_type.encode(), b"5", body], P.FAST_TO_CLIENT).msg
        assert isinstance(decoded, P.Reply)
    many = FastReplies()
    for i in range(P.FAST_BATCH + 1):
        many.add(b"ann", reply(f"r{i}"))
    first, second = many.take()
    reps = P.decode([first[1].encode(), b"5", first[2]], P.FAST_TO_CLIENT).msg
    assert isinstance(reps, P.Replies) and len(reps.reps) == P.FAST_BATCH
    assert second[1] == P.REPLY


def test_a_batch_decodes_to_raw_bodies_each_validated_alone():
    good = P.request("a" * 16, P.OP_POST, "ann", {"text": "hi"}, None, 1.0, "t" * 43, 3)
    body = P.pack("reqs", [P.encode_body(good), b'{"rid": "b2", "op": "post"}', b"123"])
    batch = P.decode([b"ann", b"REQS", b"9", body], P.FAST_TO_SERVER)
    assert batch.envelope == [b"ann"] and len(batch.msg.reqs) == 3
    assert P.decode_request(batch.msg.reqs[0]) == good
    with pytest.raises(P.ProtocolError, match="REQ"):
        P.decode_request(batch.msg.reqs[1])
    with pytest.raises(P.ProtocolError):
        P.decode_request(batch.msg.reqs[2])
    assert P.rid_of(bytes(batch.msg.reqs[1])) == "b2", "its refusal names its rid"
    assert P.rid_of(bytes(batch.msg.reqs[2])) == "?"


@pytest.mark.parametrize("body, why", [
    (b'{"reqs": []}', "length >= 1"),
    (b'{"reqs": [%s]}' % b",".join([b"{}"] * (P.FAST_BATCH + 1)), "length <= 64"),
    (b'{"reqs": {"rid": "x"}}', "array"),
    (b'{"reqs": [{}], "extra": 1}', "extra"),
])
def test_a_malformed_batch_is_refused_whole(body, why):
    with pytest.raises(P.ProtocolError, match=why):
        P.decode([b"ann", b"REQS", b"9", body], P.FAST_TO_SERVER)


def test_a_batch_is_refused_where_it_does_not_belong():
    body = P.pack("reqs", [b"{}"])
    for route in (P.CLIENT_TO_BROKER, P.BROKER_TO_SERVER):
        with pytest.raises(P.ProtocolError, match="not accepted"):
            P.decode([b"ann", b"REQS", b"9", body], route)
    with pytest.raises(P.ProtocolError, match="not accepted"):
        P.decode([b"REPS", b"9", P.pack("reps", [P.encode_body(reply("r"))])],
                 P.BROKER_TO_CLIENT)


def test_fast_log_writes_one_line_per_request_of_a_batch():
    lines, clock = [], []
    log = FastLog(lambda *parts: lines.append(parts), clock.append)
    reqs = {"reqs": [{"rid": f"r{i}", "op": "post", "user": "ann"} for i in range(3)]}
    reps = {"reps": [{"rid": "r0", "ok": True, "server": 2},
                     {"rid": "r2", "ok": False, "server": 2, "code": "bad_request"}]}
    log.on_copy([b"\x00ab", *frames("REQS", reqs, lamport=7)])
    log.on_copy([b"\x00ab", *frames("REPS", reps, lamport=40)])
    log.on_copy([b"\x00ab", *frames("REP", {"rid": "r1", "ok": True, "server": 3}, lamport=41)])
    for junk in ([b"\x00ab", b"REQS", b"1", b'{"reqs": 5}'], [b"\x00ab", b"REPS", b"1", b"{"]):
        log.on_copy(junk)
    assert lines == [("fast", "server-2->ann", "post rid=r0 ok"),
                     ("fast", "server-2->ann", "post rid=r2 error bad_request"),
                     ("fast", "server-3->ann", "post rid=r1 ok")]
    assert log.requests == 3 and log.replies == 3
    assert clock == [40, 41]
    assert len(log.names) == 0


def test_the_copies_are_read_in_bursts_and_never_left_waiting():
    pace = CapturePace(every=0.01)
    assert pace.until is None and not pace.reopens(5.0)      # idle: read whenever one comes
    pace.read(10.0)
    assert pace.until == 10.01                                # the loop wakes for it then
    assert not pace.reopens(10.005)
    assert pace.reopens(10.01)
    assert pace.until is None and not pace.reopens(10.02)    # once: listening again
