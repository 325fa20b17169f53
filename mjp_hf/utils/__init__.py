"""Small helpers every part of the package shares: message text (`listed`) and range-checked command-line numbers
(`bounded`)."""

from .arguments import bounded
from .text import listed


__all__ = ["bounded", "listed"]
