"""Text for messages and for the records that generated figures carry."""

import sys
from collections.abc import Iterable
from importlib.metadata import version


def listed(names: Iterable, limit: int = 4) -> str:
    """`names` for a message, comma-separated: the first `limit`, then how many there are in all, e.g.
    `"a, b, c, d, ... (10 in all)"`."""
    names = [str(name) for name in names]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names)} in all)"


def software_versions() -> str:
    """The versions a generated figure was measured with, e.g. `"python 3.11.7, torch 2.13.0+cpu, transformers
    5.24.0"` (read from the installed packages: nothing is imported)."""
    return f"python {sys.version.split()[0]}, torch {version('torch')}, transformers {version('transformers')}"


__all__ = ["listed", "software_versions"]
