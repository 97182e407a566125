"""The OS's Chromium driven by Playwright (the browser tests and ``web.screenshots``).

Playwright's own browser download is not used: Debian's ``chromium`` package is
(``apt-get install chromium``; ``.ci/run`` installs it when missing). Each launch
gets a fresh profile (Playwright's ``launch`` makes a temporary user-data dir).
"""
from __future__ import annotations

import importlib.util
import os
import shutil

CHROMIUM_ENV = "SOCIAL_CHROMIUM"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """``SOCIAL_CHROMIUM``, else /usr/bin/chromium, else ``chromium`` on the PATH; None
    when there is none."""
    for candidate in (os.environ.get(CHROMIUM_ENV), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def why_not() -> str | None:
    """Why a browser cannot be driven here, or None when it can."""
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -r requirements.txt)"
    if chromium_path() is None:
        return ("no chromium found (apt-get install -y chromium, or set SOCIAL_CHROMIUM "
                "to its path)")
    return None


def launch(playwright):
    """A headless Chromium of the OS."""
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=ARGS)
