"""Levers on the main job's training step (issue 12, part 2), side by side: the demo-preset step at batch 128 in fp32
eager (the reference), under bf16 autocast, at batch 256 (per image), and compiled with `torch.compile` (inductor),
with the compile time reported apart.

A step is forward, MJP loss, backward, clip at 5.0 and AdamW, as in `train_step.py`. The variants are interleaved
(one call each per round, rotating order), one thread, process CPU time by default (robust to other processes on a
shared machine); ratios are medians of per-round ratios to fp32 eager, per image.

    python benchmarks/main_job_levers.py                 # 12 rounds, with torch.compile
    python benchmarks/main_job_levers.py --no-compile    # without the compile (which needs a C++ compiler)
    python benchmarks/main_job_levers.py --quick         # smoke run: batch 8, 2 rounds, no compile
"""

import argparse
import time

import torch

from mjp_hf import MJPViTForImageClassification
from mjp_hf.training.presets import config_from_preset
from mjp_hf.utils import bounded


if not __package__:  # run as a file, `python benchmarks/main_job_levers.py`: see _package.py
    __package__ = __import__("_package").package()

from ._timing import (
    Clock,
    add_common_arguments,
    describe_machine,
    load_average,
    markdown_table,
    median,
    paired_ratio,
    setup,
    time_interleaved,
)
from .train_step import make_step


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def build_step(batch_size: int, dtype: torch.dtype, seed: int, device: torch.device, compile_model: bool = False):
    torch.manual_seed(seed)
    model = MJPViTForImageClassification(config_from_preset("demo", num_labels=10)).to(device).train()
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, 28, 28, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch_size,), generator=generator).to(device)
    return make_step(torch.compile(model) if compile_model else model, pixel_values, labels, dtype)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--rounds", type=bounded(int, minimum=1), default=12)
    parser.add_argument("--batch-size", type=bounded(int, minimum=1), default=128)
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    args = parser.parse_args(argv)
    device = setup(args)
    clock = Clock(device, args.clock)
    batch = 8 if args.quick else args.batch_size
    rounds = 2 if args.quick else args.rounds
    compile_model = not (args.quick or args.no_compile)

    print("# main_job_levers: demo-preset training step, fp32 eager vs bf16 autocast, a doubled batch, torch.compile")
    print("\n".join(describe_machine(device, clock)))
    flags = cpu_flags()
    print(
        f"CPU bf16 support: avx512_bf16 {'yes' if 'avx512_bf16' in flags else 'no'}, "
        f"amx_bf16 {'yes' if 'amx_bf16' in flags else 'no'}"
    )
    print()

    variants = {
        f"fp32 eager, batch {batch}": (build_step(batch, torch.float32, args.seed, device), batch),
        f"bf16 autocast, batch {batch}": (build_step(batch, torch.bfloat16, args.seed, device), batch),
        f"fp32 eager, batch {2 * batch}": (build_step(2 * batch, torch.float32, args.seed, device), 2 * batch),
    }
    compile_note = ""
    if compile_model:
        name = f"fp32 torch.compile, batch {batch}"
        compiled = build_step(batch, torch.float32, args.seed, device, compile_model=True)
        wall, cpu = time.perf_counter(), time.process_time()
        compiled()  # the first call compiles (the C++ compiler's subprocesses are not in this process's CPU time)
        compile_note = (
            f"torch.compile: first step (compilation) {time.perf_counter() - wall:.1f} s wall, "
            f"{time.process_time() - cpu:.1f} s CPU of this process"
        )
        variants[name] = (compiled, batch)
    steps = {name: step for name, (step, _) in variants.items()}
    times = time_interleaved(steps, rounds=rounds, warmup=2, clock=clock)

    reference = next(iter(variants))
    rows, ratios = [], {}
    for name, (_, images) in variants.items():
        # Per image: a doubled batch is compared with two reference steps.
        per_image = paired_ratio([t * batch / images for t in times[name]], times[reference])
        ratios[name] = per_image
        rows.append([name, f"{median(times[name]) * 1e3:.1f}", f"{per_image:.3f}"])
    print(markdown_table(["variant", "ms per step", "time per image vs fp32 eager"], rows))
    print()
    if compile_note:
        print(compile_note)
    print(f"rounds: {rounds}; load average at end: {load_average()}")
    print(
        "main_job_levers time per image vs fp32 eager: "
        + ", ".join(
            f"{name.split(',')[0]}{' x2 batch' if name.endswith(str(2 * batch)) else ''} {ratio:.3f}"
            for name, ratio in ratios.items()
            if name != reference
        )
    )


if __name__ == "__main__":
    main()
