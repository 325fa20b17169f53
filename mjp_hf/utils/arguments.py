"""Range-checked numbers for command lines: `in_range`, the one test of a number against its bounds, and `bounded`,
an `argparse` type built on it (a flag out of range stops the command at parse time, naming the flag)."""

import argparse
import math
from collections.abc import Callable


def in_range(
    value,
    kind: Callable = float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
) -> bool:
    """Whether `value` is a finite real number (a whole one when `kind` is `int`; never a bool) in `[minimum,
    maximum]`, each end open when its `exclusive_` flag is set and absent when None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if kind is int and value != int(value):
        return False
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        return False
    return maximum is None or (value < maximum if exclusive_maximum else value <= maximum)


def bounded(
    kind: Callable = int,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    allow_none: bool = False,
) -> Callable[[str], object]:
    """An argparse `type=` that reads `kind` (`int` or `float`) and refuses values outside
    `[minimum, maximum]` (`(minimum, maximum]` with `exclusive_minimum`), NaN and infinities (`in_range`). argparse
    then exits with `argument --flag: ...`, so the message names the flag, the value and the range. `allow_none`
    also accepts `none` (for an optional limit)."""
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
        if not in_range(value, kind, minimum=minimum, maximum=maximum, exclusive_minimum=exclusive_minimum):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: pass a value {wanted}")
        return value

    parse.__name__ = kind.__name__  # argparse's fallback message names the type
    return parse


__all__ = ["bounded", "in_range"]
