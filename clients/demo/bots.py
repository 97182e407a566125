"""Bot users for the demo: each bot is a process of its own that acts on its own.

    python -m clients.demo.bots --user alice --peers bob,carol,dave,erin --report FILE

A bot registers, waits until its peers have registered too, then until SIGTERM
(or ``--seconds``) it follows and unfollows peers, posts, sends messages and
listens -- a short long poll -- for posts by the users it follows and
messages to it, answering every message that is not itself an answer.

Like any user it is one process with its own Lamport clock, physical clock
and log (``client-<user>.log``), talking through the Lazy Pirate connection.
Every acknowledged write and every pushed item goes to the report file, one
JSON object per line (flushed at once), so that the demo can tell what the
users did and check afterwards that no acknowledged write was lost::

    {"user": "alice", "op": "post", "id": "3f2a…", "lamport": 88, "server": 2,
     "replicas": 3, "text": "…", "t": 1795715591.2}

``op`` is one of ``ready``, ``register``, ``post``, ``follow``, ``unfollow``,
``dm``, ``notified`` (a post pushed by listen), ``received`` (a message pushed
by listen), ``error`` and ``stopped``.
"""
from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Annotated, Optional

import orjson
import typer

from clients.connection import ClientError
from clients.session import UserSession
from common import cli_options as O
from common import protocol as P
from common.config import load_config

THINK = (0.15, 0.5)
"""Seconds a bot pauses between two actions (drawn at random): it paces the bot."""
LISTEN_WAIT = 0.5
"""Seconds a bot's listen waits for something to arrive."""
READY_TIMEOUT = 20.0
"""Seconds a bot waits for its peers to register before it gives up."""
ANSWER_PREFIX = "re: "

POSTS = ("good morning, everyone", "coffee first, distributed systems second",
         "just read about the bully algorithm", "Lamport clocks make my day",
         "who else is replicating three times?", "the broker never sleeps",
         "PUB/SUB drops, sequence numbers heal", "Berkeley keeps our clocks honest",
         "a write is safe once three servers hold it", "happy to be here")
QUESTIONS = ("how are you?", "lunch tomorrow?", "did you see my last post?",
             "are your clocks in sync?", "which server answered you?")
ANSWERS = ("all good, thanks!", "sure, count me in", "yes, nice one", "within a few ms",
           "no idea, the broker picks")


class Bot:
    """One user acting on its own; every socket it uses is its session's."""

    def __init__(self, session, peers: list[str], report: Path, rng: random.Random,
                 max_posts: int) -> None:
        self.session = session
        self.user = session.user
        self.peers = peers
        self.report_file = open(report, "ab")
        self.rng = rng
        self.max_posts = max_posts
        self.following: set[str] = set()
        self.posts = 0
        self.since = 0
        self.acks = 0
        self.errors = 0
        self.stopping = False

    # --- the life of a bot ---------------------------------------------------------
    def run(self, seconds: float | None) -> None:
        stop_at = None if seconds is None else time.monotonic() + seconds
        self.register()
        self.wait_for_peers()
        self.since = self.session.lamport.value
        self.report("ready")
        while not self.stopping and (stop_at is None or time.monotonic() < stop_at):
            self.act()
            self.session.log.flush()
            time.sleep(self.rng.uniform(*THINK))
        self.report("stopped", acks=self.acks, errors=self.errors)

    def stop(self, *_args) -> None:
        """SIGTERM: finish the action under way, then stop."""
        self.stopping = True

    def register(self) -> None:
        """Register (with the password of SOCIAL_PASSWORD) and log in."""
        try:
            self.session.ensure_session()
        except ClientError as exc:
            self.errors += 1
            self.report("error", action="register", code=exc.code, error=exc.message)
            return
        self.acks += 1
        self.report("register", server=None)

    def wait_for_peers(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.stopping:
            known = set(self.call(P.OP_USERS, {}).get("users", ()))
            if set(self.peers) <= known or time.monotonic() >= deadline:
                return
            time.sleep(0.2)

    def act(self) -> None:
        """One action, drawn at random among those that make sense now."""
        strangers = [p for p in self.peers if p not in self.following]
        choices = [(self.listen, 28), (self.send_message, 15)]
        if self.posts < self.max_posts:
            choices.append((self.post, 30))
        if strangers:
            choices.append((lambda: self.follow(self.rng.choice(strangers)), 20))
        if self.following:
            choices.append((lambda: self.unfollow(self.rng.choice(sorted(self.following))), 5))
        actions, weights = zip(*choices)
        self.rng.choices(actions, weights)[0]()

    # --- the actions ----------------------------------------------------------------
    def post(self) -> None:
        self.posts += 1
        text = f"{self.rng.choice(POSTS)} (#{self.posts})"
        result = self.write(P.OP_POST, {"text": text}, "post", text=text)
        if result is None:
            self.posts -= 1

    def follow(self, target: str) -> None:
        if self.write(P.OP_FOLLOW, {"target": target}, "follow", target=target) is not None:
            self.following.add(target)

    def unfollow(self, target: str) -> None:
        if self.write(P.OP_UNFOLLOW, {"target": target}, "unfollow", target=target) is not None:
            self.following.discard(target)

    def send_message(self, to: str | None = None, text: str | None = None,
                     answer_to: str | None = None) -> None:
        to = to or self.rng.choice(self.peers)
        text = text or self.rng.choice(QUESTIONS)
        self.write(P.OP_DM, {"to": to, "text": text}, "dm", to=to, text=text,
                   answer_to=answer_to)

    def listen(self) -> None:
        """A short long poll: posts by followed users, messages to me; answer the messages."""
        result = self.call(P.OP_LISTEN, {"wait": LISTEN_WAIT, "since": self.since})
        for item in result.get("items", ()):
            if item.get("type") == "message":
                self.report("received", **_item(item))
                if not item["text"].startswith(ANSWER_PREFIX):
                    answer = f"{ANSWER_PREFIX}{item['text'][:60]} {self.rng.choice(ANSWERS)}"
                    self.send_message(item["from"], answer, answer_to=item["id"])
            else:
                self.report("notified", server=result.get("server"), **_item(item))

    # --- requests and the report -------------------------------------------------------
    def call(self, op: str, args: dict) -> dict:
        """A read (or listen); an error is reported and gives an empty result."""
        try:
            return self.session.call(op, args)
        except ClientError as exc:
            self.errors += 1
            self.report("error", action=op, code=exc.code, error=exc.message)
            return {}

    def write(self, op: str, args: dict, kind: str, **details) -> dict | None:
        """A write; its ack goes to the report. None if it failed (its fate is then
        unknown when the error is ``unavailable``: the report says ``uncertain``)."""
        try:
            result = self.session.call(op, args)
        except ClientError as exc:
            self.errors += 1
            self.report("error", action=op, code=exc.code, error=exc.message,
                        uncertain=exc.code == P.ERR_UNAVAILABLE, **details)
            return None
        self.acks += 1
        view = result.get("post") or result.get("message") or result.get("follow") or {}
        self.report(kind, id=view.get("id"), lamport=view.get("lamport"),
                    server=result.get("server"), replicas=result.get("replicas"), **details)
        return result

    def report(self, op: str, **fields) -> None:
        record = {"user": self.user, "op": op, **fields, "t": time.time()}
        self.report_file.write(orjson.dumps(record) + b"\n")
        self.report_file.flush()

    def close(self) -> None:
        self.report_file.close()


def _item(item: dict) -> dict:
    keys = ("id", "author", "from", "to", "text", "lamport")
    return {k: item[k] for k in keys if k in item}


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="A bot user that acts on its own (for the demo).")


@app.command()
def main(user: Annotated[str, typer.Option(help="The bot's user name.")],
         peers: Annotated[str, typer.Option(help="Other bots, comma-separated.")],
         report: Annotated[Path, typer.Option(help="Append JSON records here.")],
         seconds: Annotated[Optional[float], typer.Option(
             help="Stop after this many seconds (default: at SIGTERM).")] = None,
         seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
         max_posts: Annotated[int, typer.Option(help="Post at most this many times.")] = 200,
         clock_chaos: Annotated[bool, typer.Option(
             "--clock-chaos", envvar="SOCIAL_CLOCK_CHAOS",
             help="Let the physical clock jump at random.")] = False,
         port_base: O.OptInt = O.PortBase, host: O.OptStr = O.Host,
         data_dir: O.OptStr = O.DataDir, log_dir: O.OptStr = O.LogDir) -> None:
    config = load_config(port_base=port_base, host=host, data_dir=data_dir, log_dir=log_dir)
    names = [p for p in peers.split(",") if p and p != user]
    password = os.environ.get("SOCIAL_PASSWORD")
    with UserSession(config, user, clock_chaos=clock_chaos, password=password) as session:
        bot = Bot(session, names, report, random.Random(seed), max_posts)
        signal.signal(signal.SIGTERM, bot.stop)
        signal.signal(signal.SIGINT, bot.stop)
        try:
            bot.run(seconds)
        finally:
            bot.close()


if __name__ == "__main__":
    app()
