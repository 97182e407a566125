"""The command line's conventions (issue 15): ``--version`` everywhere, flags shown as
flags, help for every option, errors in our own words, a ``shell`` for scripts, and a
client that says at once what it waits for when nobody answers.

Help and options are checked in process, through typer (no cluster, no subprocess
per command); ``--version``, the fast path and the waiting client run as the user
runs them, as processes.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import typer
import zmq
from typer.testing import CliRunner

from common.processes import ROOT, free_port_base
from common.version import version_line
from tests.harness import Cluster

ENTRY_POINTS = [["-m", "clients"], ["-m", "broker"], ["-m", "servers"], ["run_all.py"],
                ["-m", "web"]]
WAIT_LINE_WITHIN = 1.5
"""Seconds within which a client with nobody answering says what it waits for."""


def apps() -> dict[str, typer.Typer]:
    import broker.__main__ as broker_main
    import run_all
    import servers.__main__ as servers_main
    import web.__main__ as web_main
    from clients.cli import app as clients_app
    return {"clients": clients_app, "broker": broker_main.app, "servers": servers_main.app,
            "run_all": run_all.app, "web": web_main.app}


def commands_of(app: typer.Typer) -> list[tuple[list[str], object]]:
    """(the words that name it, the click command) of an app and each of its commands."""
    root = typer.main.get_command(app)
    return [([], root)] + [([name], command)
                           for name, command in getattr(root, "commands", {}).items()]


def run(*args: str, env: dict | None = None, timeout: float = 30.0,
        stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env, input=stdin)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e[-1])
def test_every_entry_point_prints_the_one_version(entry):
    done = run(*entry, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{version_line()}\n"
    assert version_line().startswith("social 0.")


@pytest.mark.timeout(60)
def test_no_help_shows_a_bool_placeholder_and_every_option_has_help():
    runner = CliRunner()
    for name, app in apps().items():
        for words, command in commands_of(app):
            result = runner.invoke(app, [*words, "--help"], prog_name=name)
            assert result.exit_code == 0, (name, words, result.output)
            assert "<bool>" not in result.output, (name, words, result.output)
            for param in command.params:
                assert getattr(param, "help", None), f"{name} {' '.join(words)}: {param.name}"


@pytest.mark.timeout(60)
def test_completion_is_on_and_the_broker_help_describes_it():
    runner = CliRunner()
    for name, app in apps().items():
        result = runner.invoke(app, ["--help"], prog_name=name)
        assert "--install-completion" in result.output, name
    broker_help = runner.invoke(apps()["broker"], ["--help"]).output
    assert "Run the broker" in broker_help
    up_help = runner.invoke(apps()["run_all"], ["up", "--help"]).output
    assert "--clock-chaos " in up_help and "--clock-chaos <" not in up_help


@pytest.mark.timeout(60)
def test_limit_that_is_not_a_number_is_refused_in_our_words(tmp_path):
    env = {**os.environ, "SOCIAL_DATA_DIR": str(tmp_path / "data"),
           "SOCIAL_LOG_DIR": str(tmp_path / "logs")}
    expected = "error: --limit must be a whole number, not 'abc'\n"
    for args in (["feed", "--limit", "abc"], ["chat", "bob", "--limit=abc"]):
        done = run("-m", "clients", "--user", "alice", *args, env=env)        # the fast path
        assert (done.returncode, done.stderr, done.stdout) == (2, expected, "")
    done = run("-m", "clients", "--port-base", "abc", "status", env=env)
    assert (done.returncode, done.stderr) == (2, "error: --port-base must be a whole number, "
                                                 "not 'abc'\n")
    from clients.cli import app                                               # typer's path
    result = CliRunner().invoke(app, ["--user", "alice", "feed", "--limit", "abc"])
    assert result.exit_code == 2 and result.stderr == expected


def closed_port_env(tmp_path) -> tuple[dict, int]:
    """A client's environment on a port base nobody listens on (a broker key of no one)."""
    base = free_port_base()
    env = {**os.environ, "SOCIAL_PORT_BASE": str(base), "SOCIAL_DATA_DIR": str(tmp_path / "data"),
           "SOCIAL_LOG_DIR": str(tmp_path / "logs"),
           "SOCIAL_BROKER_KEY": zmq.curve_keypair()[0].decode()}
    env.pop("SOCIAL_REQUEST_DEADLINE", None)
    return env, base


def waiting_client(env: dict, *args: str) -> tuple[float, str, float, int, str]:
    """Run the CLI: (seconds to its first stderr line, that line, seconds to exit,
    exit code, the rest of stderr)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "clients", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        said_at = time.monotonic() - started
        rest = proc.stderr.read()
        code = proc.wait(30)
    finally:
        proc.kill()
        proc.wait()
    return said_at, first, time.monotonic() - started, code, rest


@pytest.mark.timeout(60)
def test_a_read_against_a_closed_port_says_what_it_waits_for_and_gives_up_in_5_s(tmp_path):
    env, base = closed_port_env(tmp_path)
    said_at, first, ended_at, code, rest = waiting_client(env, "--user", "alice", "feed")
    endpoint = f"tcp://127.0.0.1:{base}"
    assert first == f"waiting for the broker at {endpoint} (port base {base} from SOCIAL_PORT_BASE)...\n"
    assert said_at < WAIT_LINE_WITHIN
    assert code == 1
    assert rest.startswith(f"error: no reply from the broker at {endpoint} after 5.")
    assert f"is `python run_all.py up` running on port base {base}?" in rest
    assert 4.5 < ended_at < 8.0


@pytest.mark.timeout(60)
def test_a_write_against_a_closed_port_gives_up_at_its_deadline(tmp_path):
    env, base = closed_port_env(tmp_path)
    env.pop("SOCIAL_PORT_BASE")
    said_at, first, ended_at, code, rest = waiting_client(
        env, "--port-base", str(base), "--user", "alice", "--timeout", "2.5", "post", "hi")
    assert first.endswith(f"(port base {base} from --port-base)...\n")
    assert said_at < WAIT_LINE_WITHIN
    assert code == 1 and rest.startswith("error: no reply from the broker at ")
    assert f"running on port base {base}?" in rest
    assert 2.0 < ended_at < 6.0


SCRIPT = """\
# a script: comments and blank lines are skipped
post "hello from the shell"

follow bob
feed --limit 5
feed --limit abc
dm bob 'hi bob'
chat bob --json
"""


@pytest.mark.timeout(120)
def test_shell_runs_a_script_on_one_connection_and_fails_if_a_command_did(running: Cluster):
    running.cli("bob", "users")                      # bob exists, so alice can follow him
    done = run("-m", "clients", "--user", "alice", "shell", env=running.env, stdin=SCRIPT)
    out, err = done.stdout.splitlines(), done.stderr.splitlines()
    assert done.returncode == 1                      # feed --limit abc failed
    assert err == ["error: --limit must be a whole number, not 'abc'"]
    assert out[0].startswith("posted as alice (id ")
    assert out[1].startswith("alice now follows bob")
    assert out[2] == "feed of alice: 1 post, followed users first"
    assert out[3].endswith("] alice: hello from the shell")
    assert out[4].startswith("sent to bob (id ")
    import json
    chat = json.loads(out[5])
    assert [m["text"] for m in chat["messages"]] == ["hi bob"]
    assert len(out) == 6
    # one process, one session: it logs in (registering alice) before its first command
    # and never again
    sends = [line.split("| send broker | ")[1].split()[0]
             for line in running.log_text("client-alice").splitlines() if "| send broker | " in line]
    assert sends == ["login", "register", "login", "post", "follow", "feed", "dm", "chat"]
    clean = run("-m", "clients", "--user", "alice", "shell", env=running.env,
                stdin="users\nfollowing\n")
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.splitlines()[1] == "alice follows bob"


def test_the_fast_path_parses_what_typer_would_and_leaves_the_rest_to_it():
    from clients.commands import parse
    options, name, values = parse(["--user=alice", "--port-base", "7000", "feed", "--limit", "5",
                                   "--json"], environ={})
    assert (options.user, options.port_base, options.port_base_from) == ("alice", 7000,
                                                                          "--port-base")
    assert (name, values) == ("feed", {"limit": 5, "json": True})
    options, name, values = parse(["dm", "bob", "hi there"], environ={"SOCIAL_USER": "carol",
                                                                      "SOCIAL_PORT_BASE": "7000"})
    assert (options.user, options.port_base, options.port_base_from) == ("carol", None,
                                                                          "SOCIAL_PORT_BASE")
    assert (name, values) == ("dm", {"user": "bob", "text": "hi there", "json": False})
    assert parse(["--version"], environ={})[1] == "version"
    for typers in (["--help"], ["post", "--help"], ["post"], ["post", "a", "b"], ["nope"],
                   ["post", "--", "-x"], ["--user"], ["feed", "--limit"], []):
        assert parse(typers, environ={}) is None, typers


@pytest.mark.timeout(60)
def test_a_command_loads_neither_typer_nor_loguru_nor_the_authenticator(tmp_path):
    """What start-up under 100 ms rests on (issue 15): none of these in a user's command
    (pathlib and typing_extensions: ~4 ms each; inspect: ~7 ms; json, random: ~2 ms each)."""
    env, _ = closed_port_env(tmp_path)
    code = ("import runpy, sys\n"
            "sys.argv = ['clients', '--user', 'alice', '--timeout', '0.2', 'users']\n"
            "try:\n    runpy.run_module('clients', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('typer', 'pydantic', 'rich', 'loguru', 'asyncio',"
            " 'zmq.auth.thread', 'pathlib', 'typing_extensions', 'inspect', 'json',"
            " 'random') if m in sys.modules))")
    done = run("-c", code, env=env)
    assert done.stdout.splitlines()[-1] == "[]", done.stderr
