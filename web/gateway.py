"""``python -m web``: the gateway process -- uvicorn serving ``web/api.py``.

It is a client of the broker like any other (``web/broker_link.py``) and logs to
``logs/web.log`` (the ``web`` process) in the common line format: one line per
HTTP request, and one per request sent to and reply received from the broker.
SIGINT or SIGTERM stop it (uvicorn's own handlers).

uvicorn runs on uvloop with the httptools parser (its "standard" extras, named
rather than left to "auto", so a missing one fails loudly instead of silently
costing the gateway a slower loop and a pure-Python HTTP parser), writing each
answer in one write (``web/http_protocol.py``); the access log is off (the line
above is ours).
"""
from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Annotated

import typer

from common import cli_options as O
from common.config import Config, ConfigError, load_config

PROCESS = "web"
DEFAULT_PORT = 8080
FLUSH_EVERY = 0.05
"""Seconds between two flushes of the log's gathered lines."""

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="The web panel and HTTP API of the social network.")


def build(config: Config):
    """The ASGI application and its broker link (the link opens with the first request)."""
    from fastapi import FastAPI

    from common.clock import LamportClock, PhysicalClock
    from common.log import ProcessLog
    from web.api import Guard, create_app
    from web.broker_link import BrokerLink

    lamport, clock = LamportClock(), PhysicalClock()
    log = ProcessLog(PROCESS, config.log_path(PROCESS), lamport, clock)
    link = BrokerLink(config, log, lamport, clock)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        async def flush_log():
            while True:
                await asyncio.sleep(FLUSH_EVERY)
                log.flush_if_due()
        flusher = asyncio.get_running_loop().create_task(flush_log())
        log.note(f"gateway started; broker at {link.endpoint}")
        try:
            yield
        finally:
            flusher.cancel()
            log.note("gateway stopped")
            link.close()
            log.close()

    api = create_app(link)
    api.router.lifespan_context = lifespan
    return Guard(api, link), link


@app.command()
def main(port: Annotated[int, typer.Option("--port", envvar="SOCIAL_WEB_PORT", min=1, max=65535,
                                           help="HTTP port.")] = DEFAULT_PORT,
         bind: Annotated[str, typer.Option("--bind", envvar="SOCIAL_WEB_BIND",
                                           help="Address to serve on (0.0.0.0: every "
                                                "interface; then put TLS in front).")] = "127.0.0.1",
         port_base: O.OptInt = O.PortBase, host: O.OptStr = O.Host,
         data_dir: O.OptStr = O.DataDir, log_dir: O.OptStr = O.LogDir,
         version: bool = O.version_option()) -> None:
    """Serve the web panel and the HTTP API, next to a running cluster."""
    import uvicorn

    from web.http_protocol import GatewayHttp
    try:
        config = load_config(port_base=port_base, host=host, data_dir=data_dir, log_dir=log_dir)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    asgi, _link = build(config)
    print(f"web panel: http://{bind if bind != '0.0.0.0' else '127.0.0.1'}:{port}", flush=True)
    try:
        uvicorn.run(asgi, host=bind, port=port, log_level="warning", access_log=False,
                    lifespan="on", timeout_graceful_shutdown=1, loop="uvloop", http=GatewayHttp)
    except OSError as exc:
        print(f"error: cannot serve on {bind}:{port}: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
