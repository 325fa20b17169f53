"""The main job's training step on a machine that is not idle: torch's thread settings against mjp_hf's adaptive
threads (`mjp_hf.training.threads`), each beside 0, 1 and 2 busy processes, in one run.

torch's OpenMP threads spin while they wait for each other; when another process takes a core, every operator waits
for a thread the scheduler has parked. Each setting runs in a fresh subprocess (OpenMP reads its environment once,
when torch loads), which times a demo-preset training step (forward, MJP loss, backward, clip, AdamW; batch 128) in
wall time, beside 0, 1 and 2 busy processes that it starts and stops itself (single-threaded Python spin loops,
killed at the end even on error). Before each condition's timed steps come warm-up steps, at least `--warmup-s`
seconds of them, so that the adaptive setting has settled (it rises only after two readings half a second apart):
the figures are steady-state steps. The settings:

* `torch default`: as torch starts, one thread per core, libgomp's default wait policy;
* `ACTIVE`, `PASSIVE`: one thread per core with `OMP_WAIT_POLICY` set;
* `1 thread`: `OMP_NUM_THREADS=1`;
* `adaptive`: `mjp_hf.training.threads.AdaptiveThreads` updated after every step, as `AdaptiveThreadsCallback` does in the
  example's Trainer.

Every round runs the settings in a rotating order, and each setting the three conditions in a rotating order; the
figures are medians over rounds, and a setting's busy/idle ratio pairs the conditions of one subprocess. The targets
(issue 12): adaptive within 5% of the best fixed setting on an idle machine, at most 1.5 times its own idle step
beside one busy process, at most 3 times beside two.

    python benchmarks/busy_machine.py                 # 2 rounds of 5 settings x 3 conditions
    python benchmarks/busy_machine.py --rounds 3      # steadier medians
    python benchmarks/busy_machine.py --extra "spin 10k=GOMP_SPINCOUNT=10000"   # another setting alongside
    python benchmarks/busy_machine.py --quick         # smoke run: batch 8, the adaptive setting only

Run it on a machine that is otherwise idle: the "idle" condition is only as idle as the machine.
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

from mjp_hf.utils import bounded


HERE = os.path.dirname(os.path.abspath(__file__))
if not __package__:  # run as a file, `python benchmarks/busy_machine.py`: see _package.py
    __package__ = __import__("_package").package()

# Variables that change torch's threads; the parent strips them so that each setting gets exactly its own.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "OMP_DYNAMIC",
    "OMP_PROC_BIND",
    "MJP_ADAPTIVE_THREADS",
)
ADAPTIVE = "adaptive"
SETTINGS = {
    "torch default": {},
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    ADAPTIVE: {},
}
QUICK_SETTINGS = (ADAPTIVE,)
CONDITIONS = (0, 1, 2)  # busy processes beside the measured one
TARGET_IDLE = 1.05
TARGET_BUSY = {1: 1.5, 2: 3.0}
BUSY_LOOP = "while True:\n    pass\n"


# ---------------------------------------------------------------------------------------------------------------
# Child: one setting, one measurement (torch is imported here, after the parent has set the environment)
# ---------------------------------------------------------------------------------------------------------------


def measure(args) -> dict:
    import torch

    from mjp_hf import MJPViTForImageClassification
    from mjp_hf.training.presets import config_from_preset
    from mjp_hf.training.threads import AdaptiveThreads

    from .train_step import make_step

    # Created where the example creates it: before the model and data, so its first reading has a window.
    threads = AdaptiveThreads() if args.child == ADAPTIVE else None
    torch.manual_seed(args.seed)
    model = MJPViTForImageClassification(config_from_preset("demo", num_labels=10)).train()
    generator = torch.Generator().manual_seed(args.seed)
    pixel_values = torch.randn(args.batch_size, 3, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (args.batch_size,), generator=generator)
    step = make_step(model, pixel_values, labels, torch.float32)

    def timed_steps(count: int, budget_s: float, min_s: float = 0.0) -> list[float]:
        times, start = [], time.perf_counter()
        while True:
            elapsed = time.perf_counter() - start
            if len(times) >= args.min_steps and (len(times) >= count or elapsed > budget_s) and elapsed >= min_s:
                return times
            begin = time.perf_counter()
            step()
            if threads is not None:
                threads.update()
            times.append(time.perf_counter() - begin)

    results = {}
    for condition in map(int, args.conditions.split(",")):
        with busy_processes(condition):
            # Warm-up: the allocator, caches, and (adaptive) the two readings it takes to settle after a change.
            timed_steps(args.warmup, args.budget_s / 2, min_s=args.warmup_s)
            times = timed_steps(args.steps, args.budget_s)
        results[condition] = {
            "ms_per_step": 1e3 * sum(times) / len(times),
            "steps": len(times),
            "threads": torch.get_num_threads(),
        }
    return {"setting": args.child, "conditions": results, "switches": threads.switches if threads is not None else 0}


# ---------------------------------------------------------------------------------------------------------------
# Parent: busy processes, interleaving, table and verdicts
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def busy_processes(count: int):
    """`count` single-threaded spin loops, stopped on exit whatever happens."""
    processes = []
    try:
        for _ in range(count):
            processes.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL))
        time.sleep(0.5 if count else 0.0)  # let them start spinning
        yield processes
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait()


def child_environment(setting_env: dict) -> dict:
    env = {name: value for name, value in os.environ.items() if name not in THREAD_VARIABLES}
    env.update(setting_env)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def run_child(name: str, setting_env: dict, conditions: tuple[int, ...], args) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        name,
        "--conditions",
        ",".join(map(str, conditions)),
        "--batch-size",
        str(args.batch_size),
        "--warmup",
        str(args.warmup),
        "--warmup-s",
        str(args.warmup_s),
        "--steps",
        str(args.steps),
        "--min-steps",
        str(args.min_steps),
        "--budget-s",
        str(args.budget_s),
        "--seed",
        str(args.seed),
    ]
    result = subprocess.run(
        command,
        env=child_environment(setting_env),
        cwd=os.path.dirname(HERE),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=args.timeout_s,
    )
    if result.returncode != 0:
        raise RuntimeError(f"setting {name!r} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def parse_extra(specs: list[str]) -> dict:
    """`"label=VAR=VALUE,VAR=VALUE"` -> `{label: {VAR: VALUE}}`."""
    settings = {}
    for spec in specs:
        label, _, assignments = spec.partition("=")
        pairs = [pair.partition("=") for pair in assignments.split(",") if pair]
        if not label or not pairs or any(not name or not sep for name, sep, _ in pairs):
            raise SystemExit(
                f"--extra {spec!r}: write 'label=VAR=VALUE[,VAR=VALUE]', e.g. 'spin 10k=GOMP_SPINCOUNT=10000'."
            )
        unknown = [name for name, _, _ in pairs if name not in THREAD_VARIABLES]
        if unknown:
            raise SystemExit(f"--extra {spec!r}: {unknown} are not thread variables; choose from {THREAD_VARIABLES}.")
        settings[label] = {name: value for name, _, value in pairs}
    return settings


def describe(args, settings: dict) -> list[str]:
    import torch
    import transformers

    from ._timing import _cpu_model, load_average

    parallel = torch.__config__.parallel_info()
    backend = next(
        (line.split(":", 1)[1].strip() for line in parallel.splitlines() if "parallel backend" in line), "?"
    )
    user_set = {name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ}
    return [
        f"date: {time.strftime('%Y-%m-%dT%H:%M%z')}",
        f"machine: {_cpu_model()}, {os.cpu_count()} cores; python {sys.version.split()[0]}, torch {torch.__version__} "
        f"({backend}), transformers {transformers.__version__}",
        f"step: demo preset, batch {args.batch_size}, forward + MJP loss + backward + clip + AdamW; per condition "
        f"{args.warmup} warm-up steps and at least {args.warmup_s:.0f} s of them, then {args.steps} timed (at least "
        f"{args.min_steps}, else within {args.budget_s:.0f} s); wall time, mean ms per step",
        f"settings: {', '.join(settings)}; busy process: a single-threaded Python spin loop",
        f"thread variables of this shell, not passed on: {user_set or 'none'}",
        f"load average (1/5/15 min) at start: {load_average()}",
    ]


def median(values):
    import statistics

    return statistics.median(values)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rounds", type=bounded(int, minimum=1), default=2, help="rounds of every condition x setting (default 2)"
    )
    parser.add_argument("--batch-size", type=bounded(int, minimum=1), default=128)
    parser.add_argument("--warmup", type=bounded(int, minimum=0), default=5, help="warm-up steps per condition")
    parser.add_argument(
        "--warmup-s",
        type=bounded(float, minimum=0),
        default=3.0,
        help="warm-up time per condition, at least (seconds)",
    )
    parser.add_argument("--steps", type=bounded(int, minimum=1), default=40)
    parser.add_argument(
        "--min-steps", type=bounded(int, minimum=1), default=5, help="timed steps even past --budget-s"
    )
    parser.add_argument(
        "--budget-s",
        type=bounded(float, minimum=0, exclusive_minimum=True),
        default=20.0,
        help="time cap of the timed steps of one measurement",
    )
    parser.add_argument(
        "--timeout-s",
        type=bounded(float, minimum=0, exclusive_minimum=True),
        default=600.0,
        help="a setting's subprocess is killed after this",
    )
    parser.add_argument("--extra", action="append", default=[], help="another setting: 'label=VAR=VALUE[,VAR=VALUE]'")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 8, adaptive only, 1 round, 2 steps")
    parser.add_argument("--seed", type=bounded(int, minimum=0, maximum=2**31 - 1), default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--conditions", default="0,1,2", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args)))
        return
    if args.quick:
        args.rounds, args.batch_size, args.warmup, args.warmup_s, args.steps, args.min_steps, args.budget_s = (
            1,
            8,
            1,
            0.0,
            2,
            2,
            5.0,
        )
    if args.rounds < 1 or args.steps < 1 or args.min_steps < 1:
        raise SystemExit("--rounds, --steps and --min-steps must be at least 1.")
    settings = {name: env for name, env in SETTINGS.items() if not args.quick or name in QUICK_SETTINGS}
    settings.update(parse_extra(args.extra))

    print("# busy_machine: ms per training step beside 0, 1 and 2 busy processes")
    print("\n".join(describe(args, settings)))
    print(flush=True)
    ms = {(condition, name): [] for condition in CONDITIONS for name in settings}
    threads_at_end = {key: [] for key in ms}
    names = list(settings)
    for round_index in range(args.rounds):
        conditions = CONDITIONS[round_index % 3 :] + CONDITIONS[: round_index % 3]
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            result = run_child(name, settings[name], conditions, args)
            for condition, measured in result["conditions"].items():
                ms[(int(condition), name)].append(measured["ms_per_step"])
                threads_at_end[(int(condition), name)].append(measured["threads"])
            print(f"round {round_index + 1}/{args.rounds}: {name} done", flush=True)

    from ._timing import load_average, markdown_table

    rows = []
    for name in names:
        row = [name]
        for condition in CONDITIONS:
            ratio = median([busy / own for busy, own in zip(ms[(condition, name)], ms[(0, name)])])
            cell = f"{median(ms[(condition, name)]):.0f}"
            row.append(cell if condition == 0 else f"{cell} ({ratio:.2f}x)")
        if name == ADAPTIVE:
            row[0] += (
                " (threads at end: "
                + " / ".join(",".join(map(str, threads_at_end[(condition, name)])) for condition in CONDITIONS)
                + ")"
            )
        rows.append(row)
    print()
    print(markdown_table(["setting", "idle ms", "1 busy ms (x own idle)", "2 busy ms (x own idle)"], rows))
    print()
    print(
        "Each cell: median over rounds of the mean step time; in brackets the median over rounds of the ratio to "
        "the same setting's idle step in that round."
    )
    print(f"load average at end: {load_average()}")

    fixed = [name for name in names if name != ADAPTIVE] or [ADAPTIVE]  # --quick: adaptive alone
    idle_ratio = median([ms[(0, ADAPTIVE)][r] / min(ms[(0, name)][r] for name in fixed) for r in range(args.rounds)])
    best = min(fixed, key=lambda name: median(ms[(0, name)]))
    busy_ratios = {
        condition: median([busy / own for busy, own in zip(ms[(condition, ADAPTIVE)], ms[(0, ADAPTIVE)])])
        for condition in (1, 2)
    }

    def verdict(value, limit):
        return "quick run, not checked" if args.quick else ("met" if value <= limit else "MISSED")

    print(
        f"busy_machine adaptive threads: idle {idle_ratio:.2f}x the best fixed setting ({best}; target <= "
        f"{TARGET_IDLE}: {verdict(idle_ratio, TARGET_IDLE)}), 1 busy {busy_ratios[1]:.2f}x its idle step (target <= "
        f"{TARGET_BUSY[1]}: {verdict(busy_ratios[1], TARGET_BUSY[1])}), 2 busy {busy_ratios[2]:.2f}x (target <= "
        f"{TARGET_BUSY[2]}: {verdict(busy_ratios[2], TARGET_BUSY[2])})"
    )


if __name__ == "__main__":
    main()
