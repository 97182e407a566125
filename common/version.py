"""The version of every entry point (``--version``): one constant for the whole system."""
VERSION = "0.15.0"
NAME = "social"


def version_line() -> str:
    """What ``--version`` prints: ``social 0.15.0``."""
    return f"{NAME} {VERSION}"
