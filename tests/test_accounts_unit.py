"""Accounts without sockets: who owns a name, which tokens are valid, who may do what.

The replicated part (``SocialState``: owners and sessions from ACCOUNT, SESSION and
LOGOUT events) is checked with hypothesis for any delivery order; the rules of
``servers/accounts.py`` through the real ``ClientDesk`` (``tests/desk_rig``'s
``Desk``); the broker's ``LoginThrottle`` on a clock of our own.
"""
from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.throttle import LoginThrottle
from common import protocol as P
from common.log import args_brief, brief, event_brief
from servers.accounts import Accounts, HashBudget, token_hash
from servers.state import SocialState
from tests.desk_rig import PASSWORD, WALL, Desk, req, token_of
from tests.test_state_properties import _deliver, _event

pytestmark = pytest.mark.timeout(60)

USERS = ["alice", "bob"]
HASHES = {}


def password_hash(password: str) -> str:
    """One cheap argon2id hash per password (hashing is slow; the tests need a few)."""
    if password not in HASHES:
        HASHES[password] = Accounts(SocialState(), time_cost=1, memory_kib=64).hasher.hash(password)
    return HASHES[password]


# --- the replicated state: any order, one owner, the same valid tokens --------------------------
TOKENS = [token_hash(f"token-{i}".ljust(43, "x")) for i in range(4)]


@st.composite
def account_histories(draw):
    """Registrations of two names on up to three origins (some at once, some retried on
    another origin), logins with a few tokens against whichever account the origin
    knew, logouts; each origin's seqs contiguous from 1."""
    seqs = {1: 0, 2: 0, 3: 0}
    events = []
    accounts: dict[str, list[str]] = {u: [] for u in USERS}
    for i in range(draw(st.integers(1, 14))):
        user = draw(st.sampled_from(USERS))
        origin = draw(st.sampled_from([1, 2, 3]))
        lamport = draw(st.integers(1, 30))
        kind = draw(st.sampled_from(["account", "session", "session", "logout"]))
        if kind == "account" or not accounts[user]:
            rid = f"acc{i}"
            data = {"hash": password_hash(draw(st.sampled_from(["pw-one-1", "pw-two-2"])))}
            accounts[user].append(rid)
            events.append(_event(rid, "account", user, data, lamport, origin, seqs))
            if draw(st.booleans()):          # the same register retried on another origin
                again = draw(st.sampled_from([o for o in (1, 2, 3) if o != origin]))
                events.append(_event(rid, "account", user, data, draw(st.integers(1, 30)),
                                     again, seqs))
            continue
        token = draw(st.sampled_from(TOKENS))
        if kind == "session":
            data = {"token": token, "expires": draw(st.sampled_from([50.0, 500.0])),
                    "account": draw(st.sampled_from(accounts[user]))}
        else:
            data = {"token": token}
        events.append(_event(f"{kind}{i}", kind, user, data, lamport, origin, seqs))
    return events


def _accounts(state, now):
    return ({u: (state.owner(u).id if state.owner(u) else None) for u in USERS},
            {(u, t) for u in USERS for t in TOKENS if state.session_of(t, u, now)},
            state.digest())


@settings(max_examples=200, deadline=None)
@given(account_histories(), st.lists(st.sampled_from([1, 2, 3]), max_size=60),
       st.lists(st.sampled_from([1, 2, 3]), max_size=60), st.sampled_from([10.0, 100.0]))
def test_any_delivery_order_gives_the_same_owner_and_the_same_valid_tokens(events, a, b, now):
    assert _accounts(_deliver(events, a), now) == _accounts(_deliver(events, b), now)


@settings(max_examples=150, deadline=None)
@given(account_histories(), st.sampled_from([10.0, 100.0]))
def test_the_owner_is_the_first_registration_and_only_its_sessions_count(events, now):
    state = _deliver(events, [])
    counting = {e.id: e for e in state.events.values()}
    for user in USERS:
        registrations = [e for e in counting.values() if e.kind == "account" and e.user == user]
        owner = state.owner(user)
        assert owner is min(registrations, key=P.order_key, default=None)
        for token in TOKENS:
            revoked = any(e.kind == "logout" and e.user == user and e.data.token == token
                          for e in counting.values())
            granted = any(e.kind == "session" and e.user == user and e.data.token == token
                          and e.data.account == owner.id and e.data.expires > now
                          for e in counting.values())
            assert (state.session_of(token, user, now) is not None) == (granted and not revoked)


# --- the rules, through the desk ------------------------------------------------------------------
def digest_and_count(d: Desk):
    return d.state.digest(), d.state.count


def signed_as(msg: P.Request, token: str | None) -> P.Request:
    return msgspec.structs.replace(msg, token=token)


def test_register_twice_is_refused_and_changes_nothing():
    d = Desk()
    d.sign_up("alice")
    before = digest_and_count(d)
    again = d.ask(req("reg-2", P.OP_REGISTER, "alice", password="another-password"))
    assert (again.ok, again.code) == (False, P.ERR_NAME_TAKEN)
    assert digest_and_count(d) == before


def test_a_wrong_password_or_a_name_nobody_owns_gets_no_session():
    d = Desk()
    d.sign_up("alice")
    before = digest_and_count(d)
    wrong = d.ask(P.request("in-2", P.OP_LOGIN, "alice", {"password": "not-it-at-all"}, None,
                            WALL, token_of("mallory")))
    assert (wrong.ok, wrong.code) == (False, P.ERR_UNAUTHORIZED)
    nobody = d.ask(P.request("in-3", P.OP_LOGIN, "zed", {"password": PASSWORD}, None, WALL,
                             token_of("zed")))
    assert (nobody.ok, nobody.code) == (False, P.ERR_NO_ACCOUNT)
    assert digest_and_count(d) == before


@pytest.mark.parametrize("who", ["no token", "bob's token", "a made-up token"])
def test_a_write_without_alices_token_is_refused_and_changes_nothing(who):
    d = Desk().setup()
    before = digest_and_count(d)
    token = {"no token": None, "bob's token": d.tokens["bob"],
             "a made-up token": token_of("alice").replace("x", "y")}[who]
    for i, msg in enumerate([req("w1", P.OP_POST, "alice", text="forged"),
                             req("w2", P.OP_FOLLOW, "alice", target="carol"),
                             req("w3", P.OP_DM, "alice", to="carol", text="forged"),
                             req("w4", P.OP_NOTIFICATIONS, "alice"),
                             req("w5", P.OP_LISTEN, "alice", wait=0.0, since=0),
                             req("w6", P.OP_FEED, "alice", limit=5),
                             req("w7", P.OP_USERS, "alice"),
                             req("w8", P.OP_LOGOUT, "alice")]):
        d.desk.on_REQ(b"x", signed_as(msg, token), d.now)
        d.turn()
        [(_, reply)] = [r for r in d.replies if r[1].rid == msg.rid]
        assert (reply.ok, reply.code) == (False, P.ERR_UNAUTHORIZED), (msg.op, reply)
    assert digest_and_count(d) == before and len(d.listeners) == 0


def test_chat_notifications_and_listen_are_served_to_their_own_user_only():
    d = Desk().setup()
    d.ask(req("dm1", P.OP_DM, "alice", to="bob", text="private"))
    carol = d.tokens["carol"]
    for msg in [req("c1", P.OP_CHAT, "alice", with_="bob", limit=5),
                req("c2", P.OP_CHAT, "bob", with_="alice", limit=5),
                req("c3", P.OP_NOTIFICATIONS, "bob"),
                req("c4", P.OP_LISTEN, "bob", wait=5.0, since=0)]:
        [reply] = d.send(signed_as(msg, carol))
        assert (reply.ok, reply.code) == (False, P.ERR_UNAUTHORIZED), msg.op
    assert len(d.listeners) == 0
    [mine] = d.send(req("c5", P.OP_CHAT, "carol", with_="alice", limit=5))
    assert mine.ok and mine.result["messages"] == []
    [theirs] = d.send(req("c6", P.OP_CHAT, "bob", with_="alice", limit=5))
    assert [m["text"] for m in theirs.result["messages"]] == ["private"]


def test_after_logout_the_token_is_refused_and_a_retry_of_the_logout_is_answered():
    d = Desk().setup()
    out = req("out-1", P.OP_LOGOUT, "alice")
    assert d.ask(out).ok
    [refused] = d.send(req("p1", P.OP_POST, "alice", text="after logout"))
    assert (refused.ok, refused.code) == (False, P.ERR_UNAUTHORIZED)
    assert d.ask(out).ok, "the same logout again (a retry): answered, not refused"


def test_an_expired_session_is_refused():
    d = Desk().setup()
    d.accounts.session_ttl = 0.0                       # sessions granted now expire at once
    login = P.request("in-x", P.OP_LOGIN, "dave", {"password": PASSWORD}, None, WALL,
                      token_of("dave2"))
    assert d.ask(login).ok is False                    # expired before it was answered
    [refused] = d.send(signed_as(req("p1", P.OP_POST, "dave", text="late"), token_of("dave2")))
    assert refused.code == P.ERR_UNAUTHORIZED


def test_a_login_retried_with_another_token_is_refused():
    d = Desk()
    d.sign_up("alice")
    again = P.request("in-alice", P.OP_LOGIN, "alice", {"password": PASSWORD}, None, WALL,
                      token_of("mallory"))
    reply = d.ask(again)
    assert (reply.ok, reply.code) == (False, P.ERR_BAD_REQUEST)
    assert d.state.session_of(token_hash(token_of("mallory")), "alice", WALL) is None


def test_a_name_used_before_accounts_is_claimed_once():
    d = Desk()
    seqs = {1: 0, 2: 0, 3: 0}
    for e in [_event("old-r", "register", "olduser", {}, 1, 2, seqs),
              _event("old-p", "post", "olduser", {"text": "from before"}, 2, 2, seqs)]:
        d.repl.receive(e)
    d.turn()
    assert "olduser" in d.state.users and d.state.owner("olduser") is None
    assert d.ask(req("claim", P.OP_REGISTER, "olduser", password="claimed-it")).ok
    second = d.ask(req("claim-2", P.OP_REGISTER, "olduser", password="me-too-please"))
    assert second.code == P.ERR_NAME_TAKEN


def test_a_registration_that_loses_the_name_at_the_end_is_told_so():
    """Two servers registered one name at once: the other's, earlier in the total
    order, arrives before this one's copies are made: this one is refused."""
    d = Desk(replicas=1)
    d.add_peer(2)
    d.repl.replicas = d.desk.replicas = 2
    assert d.send(req("mine", P.OP_REGISTER, "alice", password="mine-password")) == []
    seqs = {1: 0, 2: 0, 3: 0}
    theirs = _event("theirs", "account", "alice", {"hash": password_hash("pw-one-1")}, 0, 2,
                    seqs)
    d.repl.receive(theirs)
    d.turn()
    d.ack(2)
    [(_, reply)] = [r for r in d.turn() if r[1].rid == "mine"]
    assert (reply.ok, reply.code) == (False, P.ERR_NAME_TAKEN)
    assert d.state.owner("alice").id == "theirs"


def test_a_short_password_is_refused_at_register():
    d = Desk()
    reply = d.ask(req("reg", P.OP_REGISTER, "alice", password="short"))
    assert (reply.ok, reply.code) == (False, P.ERR_BAD_REQUEST)
    assert d.state.count == 0


def test_a_stored_hash_asking_for_huge_memory_is_never_verified():
    accounts = Accounts(SocialState(), time_cost=1, memory_kib=64)
    huge = "$argon2id$v=19$m=9999999,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$" + "A" * 43
    assert accounts.verify(huge, "anything", 0.0) is False


def test_the_hash_budget_refuses_beyond_its_rate_then_refills():
    budget = HashBudget(2.0, now=0.0)
    assert [budget.take(0.0) for _ in range(3)] == [True, True, False]
    assert budget.take(0.5) is True and budget.take(0.5) is False


# --- never a secret in a log line ----------------------------------------------------------------
def test_no_password_or_token_in_what_the_logs_show():
    token = token_of("alice")
    msg = P.request("r1", P.OP_LOGIN, "alice", {"password": "hunter2-secret"}, None, WALL, token)
    for text in (args_brief(msg.args), brief(msg.args), repr(msg), str(msg)):
        assert "hunter2-secret" not in text and token not in text, text
    event = P.Event(id="r1", kind="session", user="alice", lamport=1, ts=1.0, origin=1, seq=1,
                    data=P.EventData(token=token_hash(token), expires=2.0, account="a1"))
    assert token_hash(token) not in event_brief(event)


# --- the broker's throttle -----------------------------------------------------------------------
def fail(throttle: LoginThrottle, rid: str, now: float, user: str = "alice"):
    assert throttle.refuse(user, rid, now) is None
    return throttle.answered(rid, False, P.ERR_UNAUTHORIZED, now)


def test_five_failures_pass_then_the_delays_double():
    t = LoginThrottle(free_failures=5, delay=1.0, max_delay=8.0)
    for i in range(4):
        fail(t, f"r{i}", 0.0)
    assert fail(t, "r4", 0.0) == 5
    code, why = t.refuse("alice", "r5", 0.5)
    assert code == P.ERR_THROTTLED and "try again in 1 s" in why
    assert t.refuse("bob", "b1", 0.5) is None, "another user is not throttled"
    assert fail(t, "r6", 1.0) == 6 and t.blocked_for("alice", 1.0) == 2.0
    fail(t, "r7", 3.0)
    assert t.blocked_for("alice", 3.0) == 4.0
    for i, at in enumerate((7.0, 15.0, 23.0)):
        fail(t, f"r{8 + i}", at)
    assert t.blocked_for("alice", 23.0) == 8.0, "capped at max_delay"


def test_a_success_resets_and_other_errors_do_not_count():
    t = LoginThrottle(free_failures=2, delay=1.0)
    fail(t, "r1", 0.0)
    assert t.refuse("alice", "r2", 0.0) is None
    assert t.answered("r2", False, P.ERR_UNAVAILABLE, 0.0) == 1
    assert t.refuse("alice", "r3", 0.0) is None
    assert t.answered("r3", True, None, 0.0) == 0
    assert t.answered("not-a-login", False, P.ERR_UNAUTHORIZED, 0.0) is None


def test_one_login_per_user_at_a_time_but_its_retry_goes():
    t = LoginThrottle()
    assert t.refuse("alice", "r1", 0.0) is None
    code, why = t.refuse("alice", "r2", 0.1)         # two commands at once: retried
    assert code == P.ERR_UNAVAILABLE and code in P.RETRYABLE_ERRORS and "under way" in why
    assert t.refuse("alice", "r1", 0.2) is None, "the same rid again: a Lazy Pirate retry"
    assert t.refuse("alice", "r2", 60.0) is None, "the first never answered: not held forever"
