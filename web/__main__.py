"""``python -m web``: the web panel (web/gateway.py); ``--version`` without loading it."""
import sys

if sys.argv[1:] == ["--version"]:
    from common.version import version_line
    print(version_line())
    sys.exit(0)

from web.gateway import app  # noqa: E402

if __name__ == "__main__":
    app()
