"""The jigsaw op alone: block mask + permutation (`mjp_hf.jigsaw.random_jigsaw` at ratio 0.1) and the token shuffle
(`shuffle_tokens` on `[batch, patches, 384]` tokens), per-batch (one mask for the batch) and per-sample (one mask per
sample), against the grid size and the batch size; as time, as time per (mask x patch), and as a share of a
ViT-S/16 training step at batch 64.

The mask is drawn in a fixed number of rounds (no host synchronisation), each a few dozen small tensor operations on
`[masks, attempts]` and `[masks, patches]`: its cost is a constant (operation dispatch) plus a part linear in
masks x patches. The shuffle is one gather, linear in batch x patches x width.

    python benchmarks/jigsaw_op.py                       # grids 7..32, batches 1..1024 (~2-3 min)
    python benchmarks/jigsaw_op.py --baseline 2f9d716    # also time block_mask as it was at that git revision
    python benchmarks/jigsaw_op.py --step-ms 25000       # share of a step you measured (skips measuring one)
    python benchmarks/jigsaw_op.py --quick
"""

import argparse

import torch

from mjp_hf import MJPViTForImageClassification
from mjp_hf.jigsaw import num_masked_patches, random_jigsaw, shuffle_tokens
from mjp_hf.training.presets import config_from_preset
from mjp_hf.utils import bounded


if not __package__:  # run as a file, `python benchmarks/jigsaw_op.py`: see _package.py
    __package__ = __import__("_package").package()

from ._timing import (
    Clock,
    add_common_arguments,
    describe_machine,
    load_average,
    markdown_table,
    median,
    module_at_revision,
    setup,
    time_interleaved,
    verdict,
)


TARGET_SHARE = 0.005
RATIO = 0.1
WIDTH = 384  # ViT-S/16
MAX_TOKEN_BYTES = 256 * 2**20  # the shuffle is skipped where the token tensor would be larger


def vit_s_step_ms(device: torch.device, clock: Clock, batch_size: int, quick: bool) -> tuple[float, str]:
    """Median time of a stock ViT-S/16 training step (the denominator of the share), over 2 steps after 1 warmup."""
    preset = "demo" if quick else "small"
    mjp = MJPViTForImageClassification(config_from_preset(preset, num_labels=1000)).to(device)
    model = mjp.to_vit().train()
    del mjp
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    config = model.config
    pixel_values = torch.randn(batch_size, config.num_channels, config.image_size, config.image_size, device=device)
    labels = torch.randint(0, 1000, (batch_size,), device=device)

    def step():
        model(pixel_values, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = time_interleaved({"step": step}, rounds=2, warmup=1, clock=clock)["step"]
    name = "demo" if quick else "ViT-S/16"
    return median(times) * 1e3, f"stock {name} training step at batch {batch_size}, measured here"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument(
        "--grids", type=bounded(int, minimum=1), nargs="+", default=None, help="square grid sides (default 7 14 16 32)"
    )
    parser.add_argument(
        "--batch-sizes", type=bounded(int, minimum=1), nargs="+", default=None, help="default 1 8 64 256 1024"
    )
    parser.add_argument(
        "--budget-s",
        type=bounded(float, minimum=0, exclusive_minimum=True),
        default=0.5,
        help="time budget per cell (seconds)",
    )
    parser.add_argument(
        "--step-ms",
        type=bounded(float, minimum=0, exclusive_minimum=True),
        default=None,
        help="ViT-S/16 batch-64 step time to divide by",
    )
    parser.add_argument("--baseline", default=None, help="git revision whose block_mask is timed alongside")
    args = parser.parse_args(argv)
    device = setup(args)
    clock = Clock(device, args.clock)
    grids = args.grids or ([7, 14] if args.quick else [7, 14, 16, 32])
    batch_sizes = args.batch_sizes or ([1, 64] if args.quick else [1, 8, 64, 256, 1024])
    baseline = module_at_revision("mjp_hf/jigsaw.py", args.baseline) if args.baseline else None

    print("# jigsaw_op: block mask + permutation, and token shuffle, alone")
    print("\n".join(describe_machine(device, clock)))
    print(f"ratio {RATIO}, released block parameters (min block 8, aspect 0.3, cap 75/196 of the grid), width {WIDTH}")
    print()

    rows, at_reference = [], {}
    for grid in grids:
        num_patches = grid * grid
        for batch_size in batch_sizes:
            generator = torch.Generator(device=device).manual_seed(args.seed)
            calls = {}
            for mode, num_masks in (("per-batch", 1), ("per-sample", batch_size)):
                calls[f"{mode} mask"] = lambda n=num_masks: random_jigsaw(n, (grid, grid), RATIO, generator=generator)
                if baseline is not None:
                    calls[f"{mode} baseline"] = lambda n=num_masks: baseline.random_jigsaw(
                        n, (grid, grid), RATIO, generator=generator
                    )
            shuffles = batch_size * num_patches * WIDTH * 4 <= MAX_TOKEN_BYTES
            if shuffles:
                tokens = torch.randn(batch_size, num_patches, WIDTH, device=device)
                for mode, num_masks in (("per-batch", 1), ("per-sample", batch_size)):
                    _, permutation = random_jigsaw(num_masks, (grid, grid), RATIO, generator=generator)
                    calls[f"{mode} shuffle"] = lambda p=permutation: shuffle_tokens(tokens, p)
            start = clock.now()
            time_interleaved(calls, rounds=0, warmup=1, clock=clock)
            num_rounds = max(5, min(50, int(args.budget_s / max(clock.now() - start, 1e-9))))
            times = time_interleaved(calls, rounds=num_rounds, warmup=0, clock=clock)
            ms = {name: median(values) * 1e3 for name, values in times.items()}

            row = [f"{grid}x{grid}", num_masked_patches(num_patches, RATIO), batch_size]
            for mode, num_masks in (("per-batch", 1), ("per-sample", batch_size)):
                mask_ms = ms[f"{mode} mask"]
                shuffle_ms = ms.get(f"{mode} shuffle")
                row.append(f"{mask_ms:.2f}")
                if baseline is not None:
                    row.append(f"{ms[f'{mode} baseline']:.2f}")
                row.append("-" if shuffle_ms is None else f"{shuffle_ms:.2f}")
                if mode == "per-sample":
                    row.append(f"{mask_ms * 1e3 / (num_masks * num_patches):.3f}")
                if grid == 14 and batch_size == 64:
                    at_reference[mode] = mask_ms + (shuffle_ms or 0.0)
            rows.append(row)
            del calls
        print(f"done grid {grid}x{grid}: load {load_average()}", flush=True)

    headers = ["grid", "target", "batch"]
    for mode in ("per-batch", "per-sample"):
        headers.append(f"{mode} mask+perm ms")
        if baseline is not None:
            headers.append(f"{mode} baseline {args.baseline} ms")
        headers.append(f"{mode} shuffle ms")
    headers.append("per-sample mask+perm us per (mask x patch)")
    print()
    print(markdown_table(headers, rows))
    print("shuffle '-': token tensor over 256 MiB, not run.")

    if not at_reference:
        print(f"load average at end: {load_average()}")
        print("jigsaw_op: no 14x14 grid at batch 64 in this run, so no share of a ViT-S/16 step is given")
        return
    if args.step_ms is not None:
        step_ms, step_source = args.step_ms, "ViT-S/16 batch-64 step given by --step-ms"
    else:
        step_ms, step_source = vit_s_step_ms(device, clock, 64, args.quick)
    print(f"step: {step_ms:.1f} ms ({step_source})")
    print(f"load average at end: {load_average()}")
    shares = {mode: at_reference[mode] / step_ms for mode in at_reference}
    worst = max(shares.values())
    print(
        f"jigsaw_op share of a step at batch 64 (14x14, mask+perm+shuffle): per-batch {shares['per-batch']:.3%}, "
        f"per-sample {shares['per-sample']:.3%} (target < {TARGET_SHARE:.1%}: {verdict(worst, TARGET_SHARE, quick=args.quick)})"
    )


if __name__ == "__main__":
    main()
