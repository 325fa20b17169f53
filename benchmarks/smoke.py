"""Run every benchmark with `--quick` in this one process (`busy_machine` and the main job in their own
subprocesses), so that CI knows they still run.

    python benchmarks/smoke.py      # or: python -m benchmarks.smoke

Exits non-zero, naming the script, when one fails or does not print its summary line. The numbers of a quick run
use toy shapes and mean nothing.
"""

import contextlib
import io
import sys
import time


if not __package__:  # run as a file, `python benchmarks/smoke.py`: see _package.py
    __package__ = __import__("_package").package()

from . import (  # noqa: E402
    busy_machine,
    data_loading,
    dp_step,
    inference,
    jigsaw_op,
    main_job_levers,
    main_job_time,
    privacy_audit,
    train_step,
)


SUMMARY_LINES = {
    "train_step": (train_step, "train_step overhead: "),
    "inference": (inference, "inference throughput vs stock HF ViT: "),
    "jigsaw_op": (jigsaw_op, "jigsaw_op share of a step at batch 64"),
    "data_loading": (data_loading, "data_loading: today's path "),
    "busy_machine": (busy_machine, "busy_machine adaptive threads: "),
    "main_job_levers": (main_job_levers, "main_job_levers time per image vs fp32 eager: "),
    "main_job_time": (main_job_time, "main_job_time: "),
    "privacy_audit": (privacy_audit, "privacy_audit time per image: "),
    "dp_step": (dp_step, "dp_step cost vs a plain step "),
}


def main() -> int:
    failures = []
    for name, (module, summary) in SUMMARY_LINES.items():
        start = time.perf_counter()
        output = io.StringIO()
        try:
            with contextlib.redirect_stdout(output):
                module.main(["--quick"])
        except BaseException as error:  # noqa: BLE001 - report any failure, SystemExit included, and go on
            failures.append(f"{name}: {type(error).__name__}: {error}")
            continue
        last_line = output.getvalue().strip().splitlines()[-1]
        if not last_line.startswith(summary):
            failures.append(f"{name}: the last line is {last_line!r}, expected one starting with {summary!r}")
        print(f"{name} --quick: {time.perf_counter() - start:.1f} s: {last_line}")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
