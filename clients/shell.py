"""``shell``: many commands, one line each, on one session.

From a terminal it prompts (``alice> ``, with line editing); from a script it reads
lines as they come, sends runs of posts and messages pipelined and prints their
answers in the script's order. Each line is parsed as the CLI parses a command
after the global options (``commands.parse_command``) and run by
``commands.execute``, so a line prints and fails exactly as the same command
would. Its own module because only ``shell`` needs it: ``commands.execute``
imports it when the command is run, so that no other command pays for it at
start-up.
"""
from __future__ import annotations

import contextlib
import os

from clients.commands import (COMMANDS, REQUESTS, USAGE_EXIT, GlobalOptions, UsageError,
                              execute, parse_command, say, session_for, warn)
from common import protocol
from common.config import ConfigError

PIPELINED = ("post", "dm")
"""A script's commands sent without waiting for the one before (``ScriptPipeline``)."""
SCRIPT_WINDOW = 32


class ScriptPipeline:
    """A shell script's run of posts and messages, up to ``SCRIPT_WINDOW`` in flight on
    one Pipeline (issue 16), their outputs printed in the script's order; any other
    command, and the end of the input, waits for them first. The user's writes keep
    their order on every server (``clients/pipeline.py``)."""

    def __init__(self, options: GlobalOptions, session) -> None:
        self.options = options
        self.session = session
        self.pipe = None
        self.waiting: list[tuple[str, str, dict, dict]] = []   # (rid, name, values, args)
        self.answers: dict[str, object] = {}
        self.failed = False

    def submit(self, name: str, values: dict) -> None:
        from clients.connection import ClientError
        op, args_of, _ = REQUESTS[name]
        args = args_of(values)
        try:
            self.session.connection.build(op, args)          # bad input: said at once
            if self.pipe is None:
                self.pipe = self.session.pipeline(SCRIPT_WINDOW)
        except (ClientError, ConfigError, OSError) as exc:
            self.flush()
            warn(f"error: {exc}")
            self.failed = True
            return
        while self.pipe.pending >= SCRIPT_WINDOW:
            self._collect(self.pipe.poll(0.05))
        self.waiting.append((self.pipe.submit(op, args), name, values, args))
        self._collect(self.pipe.poll(0))

    def _collect(self, done_list) -> None:
        for done in done_list:
            self.answers[done.rid] = done
        while self.waiting and self.waiting[0][0] in self.answers:
            rid, name, values, args = self.waiting.pop(0)
            self._show(name, values, args, self.answers.pop(rid))

    def _show(self, name: str, values: dict, args: dict, done) -> None:
        if not done.ok:
            error = (done.reply or {}).get("error") or \
                f"no reply from the broker after {done.tries} tries"
            warn(f"error: {error}")
            self.failed = True
            return
        result = {**done.reply["result"], "server": done.reply.get("server")}
        if values.get("json", False) or self.options.json:
            say(protocol.dumps(result).decode())
        else:
            say(REQUESTS[name][2](result, self.options.user, args))

    def flush(self) -> None:
        """Wait for every command in flight, printing each answer in order."""
        while self.waiting:
            self._collect(self.pipe.poll(0.05))


class ScriptLines:
    """Lines from a file descriptor, read by us, so we know when none is ready yet."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.eof = False

    def ready(self) -> bool:
        """A whole line (or the end) can be read without waiting."""
        import select
        if b"\n" in self.buffer or self.eof:
            return True
        return bool(select.select([self.fd], [], [], 0)[0])

    def readline(self) -> str:
        while b"\n" not in self.buffer and not self.eof:
            chunk = os.read(self.fd, 65536)
            self.eof = not chunk
            self.buffer += chunk
        line, sep, self.buffer = self.buffer.partition(b"\n")
        return (line + sep).decode("utf-8", errors="replace")


def shell(options: GlobalOptions, lines) -> int:
    """Commands line by line from ``lines`` (stdin): ``alice> `` prompts on a terminal;
    a script gets none, and exit code 1 if any command failed. One session for all;
    in a script, runs of posts and messages go out pipelined (``ScriptPipeline``)."""
    import shlex
    interactive = lines.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - line editing and history for input()
    else:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            lines = ScriptLines(lines.fileno())
    prompt = f"{options.user or 'social'}> "
    failed = False
    with session_for(options) as session:
        script = ScriptPipeline(options, session)
        while True:
            if interactive:
                try:
                    line = input(prompt)
                except EOFError:
                    print()
                    break
                except KeyboardInterrupt:
                    print()
                    continue
            else:
                if not getattr(lines, "ready", lambda: True)():
                    script.flush()                 # nothing more yet: answer what is sent
                line = lines.readline()
                if not line:
                    break
            try:
                words = shlex.split(line, comments=True)
            except ValueError as exc:
                warn(f"error: {exc}")
                failed = True
                continue
            if not words:
                continue
            if words[0] in ("exit", "quit"):
                break
            if not interactive and options.user is not None:
                try:
                    command = parse_command(words)
                except UsageError:
                    command = None
                if command is not None and command[0] in PIPELINED \
                        and command[1].get("server") is None:
                    script.submit(*command)
                    continue
            script.flush()
            try:
                code = run_line(options, words, session)
            except KeyboardInterrupt:          # Ctrl-C stops the command, not the shell
                if not interactive:
                    raise
                print()
                code = 130
            failed = failed or code != 0
        script.flush()
    failed = failed or script.failed
    return 1 if failed and not interactive else 0


def run_line(options: GlobalOptions, words: list[str], session) -> int:
    """One shell line: a command as the CLI takes it after the global options."""
    try:
        command = parse_command(words)
    except UsageError as exc:
        warn(f"error: {exc}")
        return USAGE_EXIT
    if command is None or command[0] == "shell":
        names = ", ".join(name for name in COMMANDS if name != "shell")
        warn(f"error: not a command: {' '.join(words)!r} (commands: {names}; "
             f"`python -m clients COMMAND --help` for each)")
        return USAGE_EXIT
    return execute(options, command[0], command[1], session)
