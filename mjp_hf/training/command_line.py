"""What a command line does around its `main` that a library call must not: adapt torch's thread count to the
machine's load (`threads.AdaptiveThreads`).

Library functions never change process-wide settings: the loops of `mjp_hf.evaluation` take an optional
`between_batches` hook (called after each batch) and leave torch's thread count alone. A `python -m` entry point runs
its `main(argv, between_batches=...)` through `run_command_line`, which passes the process's controller:

    if __name__ == "__main__":
        from ..training.command_line import run_command_line

        run_command_line(main)

A `main` passes the hook on only when its model runs on the CPU (on an accelerator the CPU threads only feed it).
The training example adapts the same way, through `threads.AdaptiveThreadsCallback`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .threads import adaptive_threads


def run_command_line(main: Callable, argv: Sequence[str] | None = None):
    """`main(argv, between_batches=...)` with the process's adaptive thread controller as the hook."""
    return main(argv, between_batches=adaptive_threads().update)


__all__ = ["run_command_line"]
