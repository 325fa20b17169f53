"""Range-checked numbers for `argparse`: a flag out of range stops the command at parse time, naming the flag."""

import argparse
import math
from collections.abc import Callable


def bounded(
    kind: Callable = int,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    allow_none: bool = False,
) -> Callable[[str], object]:
    """An argparse `type=` that reads `kind` (`int` or `float`) and refuses values outside
    `[minimum, maximum]` (`(minimum, maximum]` with `exclusive_minimum`), NaN and infinities. argparse then exits
    with `argument --flag: ...`, so the message names the flag, the value and the range. `allow_none` also accepts
    `none` (for an optional limit)."""
    if minimum is not None and maximum is not None:
        wanted = f"in {'(' if exclusive_minimum else '['}{minimum}, {maximum}]"
    elif minimum is not None:
        wanted = f"{'above' if exclusive_minimum else 'at least'} {minimum}"
    else:
        wanted = f"at most {maximum}" if maximum is not None else "that is finite"

    def parse(text: str):
        if allow_none and text.strip().lower() == "none":
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r}: pass a finite number {wanted}")
        too_low = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
        if too_low or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: pass a value {wanted}")
        return value

    parse.__name__ = kind.__name__  # argparse's fallback message names the type
    return parse


__all__ = ["bounded"]
