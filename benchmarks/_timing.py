"""Shared pieces of the benchmarks: command-line flags, clocks, interleaved timing, ratios, machine description.

Timing rules, because these machines are shared and noisy:

* variants are **interleaved** in one process, one call of each per round, the order rotating every round, so that
  a load spike from another process hits all of them alike;
* a ratio is the **median of the per-round ratios** (a paired estimate), next to the medians themselves;
* on a CPU with one thread the default clock is the **process CPU time**, which does not count the time the
  scheduler gives to other processes; elsewhere it is wall time after synchronising the device;
* the load average (`os.getloadavg()`) is printed before and after.
"""

import argparse
import datetime
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch

from mjp_hf.training.threads import THREAD_COUNT_VARIABLES
from mjp_hf.utils import bounded, software_versions


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument(
        "--threads",
        type=bounded(int, minimum=1),
        default=None,
        help="CPU threads for torch (default 1, or the count OMP_NUM_THREADS/MKL_NUM_THREADS set: on a shared "
        "machine, OpenMP with every core busy elsewhere is several times slower and far noisier; a fixed count keeps "
        "the variants of a round comparable)",
    )
    parser.add_argument(
        "--clock",
        choices=("auto", "cpu", "wall"),
        default="auto",
        help="auto: process CPU time on a CPU with one thread, else wall time after synchronising the device",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds: tiny shapes, few steps")
    parser.add_argument("--seed", type=bounded(int, minimum=0, maximum=2**31 - 1), default=0)


def setup(args: argparse.Namespace) -> torch.device:
    """Apply the common flags; return the device, with a clear error when it cannot be used."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine; use --device cpu.")
    if args.threads is None:
        # The count the user fixed in the environment stands; else one thread (see --threads).
        user_count = any(os.environ.get(name, "").strip() for name in THREAD_COUNT_VARIABLES)
        args.threads = torch.get_num_threads() if user_count else 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return device


def parse_dtypes(names: list[str]) -> list[torch.dtype]:
    unknown = [name for name in names if name not in DTYPES]
    if unknown:
        raise SystemExit(f"Unknown dtype(s) {unknown}; choose from {sorted(DTYPES)}.")
    return [DTYPES[name] for name in names]


class Clock:
    """A clock that waits for the device before reading, so that a reading covers the work queued before it."""

    def __init__(self, device: torch.device, kind: str = "auto"):
        self.device = device
        if kind == "auto":
            kind = "cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"
        if kind == "cpu" and device.type != "cpu":
            raise SystemExit("--clock cpu measures host CPU time and cannot time work on an accelerator; use wall.")
        self.kind = kind
        self._read = time.process_time if kind == "cpu" else time.perf_counter

    @property
    def description(self) -> str:
        if self.kind == "cpu":
            return "process CPU time (1 thread: time given to other processes is not counted)"
        return f"wall time{' after device synchronisation' if self.device.type != 'cpu' else ''}"

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type not in ("cpu", "meta") and hasattr(torch, self.device.type):
            getattr(torch, self.device.type).synchronize()

    def now(self) -> float:
        self.synchronize()
        return self._read()


def time_interleaved(
    variants: dict[str, Callable[[], object]], *, rounds: int, warmup: int, clock: Clock
) -> dict[str, list[float]]:
    """Call every variant once per round, in an order that rotates each round; return seconds per call.

    The first `warmup` rounds are run and discarded (allocator, caches, lazy initialisation)."""
    names = list(variants)
    times = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock.now()
            variants[name]()
            elapsed = clock.now() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of `numerator[i] / denominator[i]`: robust to load that drifts between rounds."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def median_interval(
    values: list[float], *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """A bootstrap confidence interval of the median of `values`: resampled with replacement, percentile bounds."""
    values = torch.tensor(values, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(values), (resamples, len(values)), generator=generator)
    medians = values[picks].median(dim=1).values
    tail = (1 - confidence) / 2
    low, high = torch.quantile(medians, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return low, high


def paired_ratio_interval(numerator: list[float], denominator: list[float], **kwargs) -> tuple[float, float]:
    """A bootstrap confidence interval of `paired_ratio` (rounds resampled)."""
    return median_interval([a / b for a, b in zip(numerator, denominator, strict=True)], **kwargs)


def interval_verdict(low: float, high: float, limit: float, *, at_most: bool = True, quick: bool = False) -> str:
    """`met` or `MISSED` when the whole interval is on one side of the limit, else `unresolved` (noise too large)."""
    if quick:
        return "quick run on toy shapes, not checked"
    inside, outside = (high <= limit, low > limit) if at_most else (low >= limit, high < limit)
    return (
        "met"
        if inside
        else "MISSED"
        if outside
        else "unresolved: the interval straddles it; rerun with a larger --budget-s"
    )


def spread(values: list[float]) -> float:
    """Half the interquartile range relative to the median: the step-to-step noise of one variant."""
    if len(values) < 4:
        return float("nan")
    quartiles = statistics.quantiles(values, n=4)
    return (quartiles[2] - quartiles[0]) / 2 / statistics.median(values)


def load_average() -> str:
    try:
        return "/".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device, clock: Clock) -> list[str]:
    """Lines naming the date, machine, library versions, device, threads, clock and load."""
    lines = [
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='minutes')}",
        f"machine: {_cpu_model()}, {os.cpu_count()} cores; {software_versions()}",
        f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        f"torch threads: {torch.get_num_threads()}; clock: {clock.description}",
        f"load average (1/5/15 min) at start: {load_average()}",
    ]
    return lines


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def verdict(value: float, limit: float, *, at_most: bool = True, quick: bool = False) -> str:
    if quick:
        return "quick run on toy shapes, not checked"
    met = value <= limit if at_most else value >= limit
    return "met" if met else "MISSED"


def module_at_revision(path: str, revision: str, former_paths: tuple[str, ...] = ()):
    """The repository's module at `path` (e.g. `mjp_hf/jigsaw.py`) as it was at a git revision, imported beside
    today's, for a `--baseline` column; at a revision before the module moved, the first of `former_paths` git has.
    Relative imports in a file of `mjp_hf` resolve against today's package."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (path, *former_paths):
        shown = subprocess.run(["git", "show", f"{revision}:{candidate}"], cwd=root, capture_output=True, text=True)
        if shown.returncode == 0:
            source, path = shown.stdout, candidate
            break
    else:
        raise SystemExit(f"--baseline {revision}: git cannot show {path} there: {shown.stderr.strip()}")
    package, stem = os.path.dirname(path).replace("/", "."), os.path.splitext(os.path.basename(path))[0]
    name = f"{package}.{stem}_at_{revision}".replace("-", "_") if package else f"{stem}_at_{revision}"
    file_path = os.path.join(tempfile.mkdtemp(), os.path.basename(path))
    with open(file_path, "w") as file:
        file.write(source)
    spec = importlib.util.spec_from_file_location(name, file_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
