"""The pages: the web panel (``/``), the API's documentation page (``/docs``) and
the files they load (``/static``, from ``web/static/``).

Plain HTML, CSS and JavaScript, no build step. The two pages are sent with
``Cache-Control: no-cache`` so a new gateway's panel is seen at once; their
Content-Security-Policy and the other security headers are ``Guard``'s
(``web/guard.py``), as for every answer.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def add_pages(app: FastAPI) -> None:
    """``/static``, ``/`` and ``/docs`` on ``app``."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return FileResponse(STATIC / "docs.html", headers={"Cache-Control": "no-cache"})
