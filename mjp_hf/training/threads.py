"""How many CPU threads torch uses, adapted at run time to what else the machine is running.

torch runs its CPU kernels on an OpenMP team (libgomp in the PyPI wheels). Its threads spin while they wait for
each other, and every operator ends at a barrier. On an idle machine that is the fastest setting. When another
process takes a core, the scheduler parks one of the team's threads for a time slice, and every barrier of the step
waits for it: on a 2-core machine a small ViT's training step becomes several times slower beside one busy process
and tens of times slower beside two (benchmarks/busy_machine.py measures it). One thread has no barrier to wait at.

The policy: use as many threads as there are cores that other processes leave idle, at least one and at most the
count torch started with. `AdaptiveThreads` reads, every half second, how much CPU time the machine spent outside
this process (`/proc/stat`, steal time included, minus this process's own time) and calls `torch.set_num_threads`
between training steps or evaluation batches. Only entry points do this: the training example through
`AdaptiveThreadsCallback`, the `python -m` evaluations through `command_line.run_command_line`, which passes
`AdaptiveThreads.update` as the `between_batches` hook of their loops; library functions never change the thread
count. A reading is one read of `/proc/stat` and `os.times()`, never a device sync; between readings an update is
one clock read.

What the user chose stands: with `OMP_NUM_THREADS` or `MKL_NUM_THREADS` set, or `MJP_ADAPTIVE_THREADS=0`, the
controller does nothing; when anything else changes the thread count while it runs, it stands down. It never sets
an environment variable (so `OMP_WAIT_POLICY` and `GOMP_SPINCOUNT` stay the user's), and it only acts when the model
runs on the CPU. Outside Linux (no `/proc/stat`) it does nothing.

Reproducibility: some CPU kernels split their reductions by thread, so the rounding of a run depends on its thread
count. A run is bit-identical to another with the same seed, versions and thread count; a run whose count followed
the load agrees to rounding, not bit for bit. Set `OMP_NUM_THREADS` (e.g. to the core count) for bit-identical reruns.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator

import torch
from transformers import TrainerCallback


logger = logging.getLogger(__name__)

# Environment variables that fix the thread count; when the user sets one, the count is theirs.
THREAD_COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# `MJP_ADAPTIVE_THREADS=0` turns the controller off and leaves torch's count alone.
SWITCH_VARIABLE = "MJP_ADAPTIVE_THREADS"
# /proc/stat fields counted as busy: user, nice, system, irq, softirq, steal (guest time is inside user already).
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


def _own_cpu_seconds() -> float:
    """CPU time of this process, all its threads, user and system."""
    own = os.times()
    return own.user + own.system


def user_thread_setting(environ: dict | None = None) -> str | None:
    """The environment variable by which the user fixed the thread count or turned the policy off, or `None`."""
    environ = os.environ if environ is None else environ
    for name in THREAD_COUNT_VARIABLES:
        if environ.get(name, "").strip():
            return name
    if environ.get(SWITCH_VARIABLE, "").strip().lower() in ("0", "false", "no", "off"):
        return SWITCH_VARIABLE
    return None


class CpuContention:
    """Cores' worth of CPU time that everything but this process took since the previous call, on the CPUs this
    process may run on, from `/proc/stat` and `os.times()`.

    Steal time (a hypervisor running other guests on this VM's cores) counts as taken: a parked vCPU stalls an
    OpenMP barrier as a parked thread does. Child processes (data-loader workers) count as others too, since they
    compete for the same cores as this process's threads."""

    def __init__(
        self,
        stat_path: str = "/proc/stat",
        clock: Callable[[], float] = time.monotonic,
        own_cpu_seconds: Callable[[], float] | None = None,
        cpus: Iterable[int] | None = None,
    ):
        self.stat_path = stat_path
        self.clock = clock
        self.own_cpu_seconds = own_cpu_seconds or _own_cpu_seconds
        if cpus is None:
            try:
                cpus = os.sched_getaffinity(0)
            except (AttributeError, OSError):
                cpus = None
        # Only the cores this process may run on: load elsewhere on a bigger machine does not stall its threads.
        self.cpus = None if cpus is None else {f"cpu{index}" for index in cpus}
        self.ticks_per_second = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._previous = self._snapshot()

    @property
    def available(self) -> bool:
        return self._previous is not None

    def _machine_busy_seconds(self) -> float | None:
        try:
            with open(self.stat_path) as stat:
                lines = stat.read().splitlines()
        except OSError:
            return None
        busy = 0
        for line in lines:
            name, _, values = line.partition(" ")
            if not name.startswith("cpu") or name == "cpu" or (self.cpus is not None and name not in self.cpus):
                continue
            fields = values.split()
            busy += sum(int(fields[index]) for index in _BUSY_FIELDS if index < len(fields))
        return busy / self.ticks_per_second

    def _snapshot(self) -> tuple[float, float, float] | None:
        busy = self._machine_busy_seconds()
        if busy is None:
            return None
        return self.clock(), busy, self.own_cpu_seconds()

    def __call__(self) -> float | None:
        """Cores used by others since the previous call (0 when nothing else ran), or `None` when unknown."""
        current = self._snapshot()
        previous, self._previous = self._previous, current
        if current is None or previous is None or current[0] <= previous[0]:
            return None
        wall = current[0] - previous[0]
        return max(0.0, ((current[1] - previous[1]) - (current[2] - previous[2])) / wall)


class AdaptiveThreads:
    """Sets `torch.set_num_threads` to the cores that other processes leave idle, re-read every `interval_s`.

    A core counts as taken when others use more than `slack` of it, so that system daemons do not cost a thread.
    The count drops at the first reading that asks for fewer threads (a stalled OpenMP barrier costs the most) and
    rises only when two readings in a row agree. `reader` returns the cores others used since its previous call, or
    `None` (see `CpuContention`); tests inject their own.

        threads = adaptive_threads()          # the process-wide controller
        for batch in threads.watch(loader, device):   # or threads.update() between steps; in a Trainer,
            ...                                       # AdaptiveThreadsCallback
    """

    def __init__(
        self,
        max_threads: int | None = None,
        reader: Callable[[], float | None] | None = None,
        interval_s: float = 0.5,
        slack: float = 0.2,
        cores: int | None = None,
        environ: dict | None = None,
    ):
        self.max_threads = max_threads or torch.get_num_threads()
        self.interval_s = interval_s
        self.slack = slack
        if cores is None:
            try:
                cores = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                cores = os.cpu_count() or 1
        self.cores = cores
        self.user_setting = user_thread_setting(environ)
        self.reader = reader if reader is not None else CpuContention()
        available = getattr(self.reader, "available", True)
        self.enabled = self.user_setting is None and self.max_threads > 1 and available
        self.threads = torch.get_num_threads()
        self.switches = 0
        self._last_reading = time.monotonic()
        self._pending_rise: int | None = None
        if self.user_setting is not None:
            logger.info("%s is set: torch keeps %d threads.", self.user_setting, self.threads)

    def target(self, others: float) -> int:
        """The thread count for `others` cores in use elsewhere."""
        taken = math.ceil(max(others - self.slack, 0.0))
        return max(1, min(self.max_threads, self.cores - taken))

    def observe(self, others: float | None) -> int:
        """Apply one reading of the cores others use; return the thread count now in force."""
        if not self.enabled:
            return torch.get_num_threads()
        if others is None:
            return self.threads
        if torch.get_num_threads() != self.threads:
            # Someone else set the count (the user, a library): theirs stands from now on.
            self.enabled = False
            logger.info(
                "The torch thread count was set to %d elsewhere; adaptive threads stand down.", torch.get_num_threads()
            )
            return torch.get_num_threads()
        wanted = self.target(others)
        if wanted > self.threads:
            # Rising needs two readings in a row: one quiet half second is not an idle machine.
            rise, self._pending_rise = self._pending_rise, wanted
            wanted = min(rise, wanted) if rise is not None else self.threads
        else:
            self._pending_rise = None
        if wanted != self.threads:
            logger.debug(
                "Others use %.2f of %d cores: torch threads %d -> %d.", others, self.cores, self.threads, wanted
            )
            torch.set_num_threads(wanted)
            self.threads = wanted
            self.switches += 1
        return self.threads

    def stand_down(self) -> None:
        """Leave the thread count as it is from now on (a count the user gave)."""
        self.enabled = False

    def update(self) -> int:
        """Take a reading when `interval_s` has passed since the last one; cheap to call after every step."""
        if not self.enabled:
            return torch.get_num_threads()
        now = time.monotonic()
        if now - self._last_reading < self.interval_s:
            return self.threads
        self._last_reading = now
        return self.observe(self.reader())

    def watch(self, iterable: Iterable, device: torch.device | str | None = None) -> Iterator:
        """Yield from `iterable`, updating the thread count between items (an evaluation loop's batches); a loop on an
        accelerator `device` is left alone."""
        if device is not None and torch.device(device).type != "cpu":
            yield from iterable
            return
        for item in iterable:
            yield item
            self.update()


_shared: AdaptiveThreads | None = None


def adaptive_threads() -> AdaptiveThreads:
    """The process-wide `AdaptiveThreads`, created at the first call. Every loop of a process uses this one: two
    controllers would each see the other's change as the user's and stand down."""
    global _shared
    if _shared is None:
        _shared = AdaptiveThreads()
    return _shared


class AdaptiveThreadsCallback(TrainerCallback):
    """Runs `AdaptiveThreads.update` after every training step and evaluation batch of a `Trainer` whose model runs
    on the CPU (on an accelerator the CPU threads only feed it, and their count is left alone)."""

    def __init__(self, controller: AdaptiveThreads | None = None):
        self.controller = controller
        # Training steps run at each thread count, reported at the end when the count moved.
        self.steps_at: dict[int, int] = {}

    def _update(self, args) -> None:
        if args.device.type != "cpu":
            return
        if self.controller is None:
            self.controller = adaptive_threads()
        self.controller.update()

    def on_train_begin(self, args, state, control, **kwargs):
        self._update(args)

    def on_step_end(self, args, state, control, **kwargs):
        if args.device.type == "cpu":
            threads = torch.get_num_threads()
            self.steps_at[threads] = self.steps_at.get(threads, 0) + 1
        self._update(args)

    def on_prediction_step(self, args, state, control, **kwargs):
        self._update(args)

    def on_train_end(self, args, state, control, **kwargs):
        if self.controller is not None and self.controller.switches:
            # Visible: a run that slowed down because something else used a core should say so.
            counts = ", ".join(
                f"{steps} at {threads}" for threads, steps in sorted(self.steps_at.items(), reverse=True)
            )
            logger.warning(
                "torch threads followed the machine's load: training steps %s thread(s) (%d changes; other "
                "processes or the host used a core). The result agrees with a fixed-count run to rounding; "
                "set OMP_NUM_THREADS for bit-identical reruns.",
                counts,
                self.controller.switches,
            )


__all__ = ["AdaptiveThreads", "AdaptiveThreadsCallback", "CpuContention", "adaptive_threads", "user_thread_setting"]
