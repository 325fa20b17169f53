"""Text for messages."""

from collections.abc import Iterable


def listed(names: Iterable, limit: int = 4) -> str:
    """`names` for a message, comma-separated: the first `limit`, then how many there are in all, e.g.
    `"a, b, c, d, ... (10 in all)"`."""
    names = [str(name) for name in names]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names)} in all)"


__all__ = ["listed"]
