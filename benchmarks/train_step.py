"""Training-step cost of MJP-ViT against a stock transformers ViT of the same shape, measured side by side.

A step is forward, loss (cross-entropy; plus the weighted DALR loss for MJP), backward, gradient clipping at 5.0 (as
released) and an AdamW update. The stock model is the MJP model's own `to_vit()` export, so both hold the same
weights. The jigsaw is forced on for every MJP step (`jigsaw=True`), per-batch and per-sample, which is the worst
case: in training only `jigsaw_prob` of the steps are jigsawed.

Two estimates of the overhead are printed:

* **step ratio**: the median over rounds of (MJP step / stock step), the three variants interleaved in one process;
  honest but as noisy as the machine (see the `noise` column);
* **embeddings extra**: the extra time of the MJP embeddings (jigsaw, unknown position embedding, DALR loss) over
  the stock embeddings, forward and backward, timed alone over many more calls, as a share of the stock step. The
  transformer layers, head and optimizer are the same code in both models, so this is where any overhead lives.

    python benchmarks/train_step.py                      # ViT-S/16 at batch 8 and 32, demo at 8 and 64 (~5 min)
    python benchmarks/train_step.py --batch-sizes 64     # ViT-S/16 at batch 64 (several minutes on 2 cores)
    python benchmarks/train_step.py --quick              # smoke run, a few seconds
    python benchmarks/train_step.py --device cuda --dtype bf16 --batch-sizes 64 128
"""

import argparse

import torch

from mjp_hf import MJPViTForImageClassification
from mjp_hf.training.presets import config_from_preset
from mjp_hf.utils import bounded


if not __package__:  # run as a file, `python benchmarks/train_step.py`: see _package.py
    __package__ = __import__("_package").package()

from ._timing import (
    Clock,
    add_common_arguments,
    describe_machine,
    load_average,
    markdown_table,
    median,
    paired_ratio,
    parse_dtypes,
    setup,
    spread,
    time_interleaved,
    verdict,
)


TARGET_PER_BATCH = 1.02
TARGET_PER_SAMPLE = 1.03
NUM_LABELS = 1000
PRESET_NAMES = {"small": "ViT-S/16", "demo": "demo"}


def build_models(preset: str, device: torch.device) -> tuple[MJPViTForImageClassification, torch.nn.Module]:
    config = config_from_preset(preset, num_labels=NUM_LABELS)
    mjp = MJPViTForImageClassification(config).to(device).train()
    return mjp, mjp.to_vit().train()


def make_step(model, pixel_values, labels, autocast_dtype, **forward_kwargs):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    device_type = pixel_values.device.type

    def step():
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32):
            loss = model(pixel_values, labels=labels, **forward_kwargs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def with_per_sample(mjp, per_sample: bool, fn):
    """The same MJP model serves both jigsaw modes: the embeddings read `config.jigsaw_per_sample` at each call."""

    def call():
        mjp.config.jigsaw_per_sample = per_sample
        return fn()

    return call


def embedding_variants(mjp, stock, pixel_values, autocast_dtype):
    mjp_embeddings, stock_embeddings = mjp.vit.embeddings, stock.vit.embeddings
    device_type = pixel_values.device.type
    autocast = lambda: torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32)  # noqa: E731

    def stock_call():
        with autocast():
            out = stock_embeddings(pixel_values)
        out.float().sum().backward()

    def mjp_call():
        with autocast():
            jigsaw_mask, permutation = mjp_embeddings.jigsaw(pixel_values, jigsaw=True)
            out = mjp_embeddings.embed(pixel_values, jigsaw_mask, permutation)
            loss = mjp.vit.localization_loss(jigsaw_mask, batch_size=pixel_values.shape[0])
        (out.float().sum() + loss).backward()

    return {
        "stock": stock_call,
        "per-batch": with_per_sample(mjp, False, mjp_call),
        "per-sample": with_per_sample(mjp, True, mjp_call),
    }


def rounds_for(budget_s: float, round_s: float, minimum: int, maximum: int) -> int:
    return max(minimum, min(maximum, int(budget_s / max(round_s, 1e-9))))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument(
        "--batch-sizes",
        type=bounded(int, minimum=1),
        nargs="+",
        default=None,
        help="ViT-S/16 batch sizes (default 8 32)",
    )
    parser.add_argument(
        "--demo-batch-sizes",
        type=bounded(int, minimum=1),
        nargs="+",
        default=None,
        help="demo batch sizes (default 8 64)",
    )
    parser.add_argument("--dtype", default="fp32", help="fp32, or bf16/fp16 (autocast over fp32 weights)")
    parser.add_argument(
        "--budget-s",
        type=bounded(float, minimum=0, exclusive_minimum=True),
        default=60.0,
        help="time budget per ViT-S/16 batch size (seconds)",
    )
    parser.add_argument("--min-rounds", type=bounded(int, minimum=1), default=3)
    args = parser.parse_args(argv)
    device = setup(args)
    (autocast_dtype,) = parse_dtypes([args.dtype])
    clock = Clock(device, args.clock)

    plan = []  # (preset, batch size, time budget, max rounds)
    demo_batches = args.demo_batch_sizes or ([4] if args.quick else [8, 64])
    plan += [("demo", batch, 2.0 if args.quick else 10.0, 3 if args.quick else 40) for batch in demo_batches]
    if not args.quick:
        plan += [("small", batch, args.budget_s, 30) for batch in (args.batch_sizes or [8, 32])]

    print("# train_step: MJP-ViT vs stock transformers ViT, forward + backward + clip + AdamW")
    print("\n".join(describe_machine(device, clock)))
    print(
        f"dtype: {args.dtype}{' (autocast)' if autocast_dtype != torch.float32 else ''}; jigsaw forced on every MJP step"
    )
    print()

    rows, summary = [], {}
    for preset, batch_size, budget_s, max_rounds in plan:
        mjp, stock = build_models(preset, device)
        config = mjp.config
        generator = torch.Generator(device="cpu").manual_seed(args.seed)
        pixel_values = torch.randn(
            batch_size, config.num_channels, config.image_size, config.image_size, generator=generator
        ).to(device)
        labels = torch.randint(0, NUM_LABELS, (batch_size,), generator=generator).to(device)

        mjp_step = make_step(mjp, pixel_values, labels, autocast_dtype, jigsaw=True)
        steps = {
            "stock": make_step(stock, pixel_values, labels, autocast_dtype),
            "per-batch": with_per_sample(mjp, False, mjp_step),
            "per-sample": with_per_sample(mjp, True, mjp_step),
        }
        # One warmup round, which also tells how many rounds fit in the budget.
        start = clock.now()
        time_interleaved(steps, rounds=0, warmup=1, clock=clock)
        num_rounds = rounds_for(budget_s, clock.now() - start, args.min_rounds, max_rounds)
        times = time_interleaved(steps, rounds=num_rounds, warmup=0, clock=clock)

        embeddings = embedding_variants(mjp, stock, pixel_values, autocast_dtype)
        start = clock.now()
        time_interleaved(embeddings, rounds=0, warmup=2, clock=clock)
        embedding_rounds = rounds_for(budget_s / 4, (clock.now() - start) / 2, 5, 200 if not args.quick else 5)
        embedding_times = time_interleaved(embeddings, rounds=embedding_rounds, warmup=0, clock=clock)
        mjp.zero_grad(set_to_none=True)
        stock.zero_grad(set_to_none=True)

        stock_ms = median(times["stock"]) * 1e3
        row = [PRESET_NAMES[preset], batch_size, num_rounds, f"{stock_ms:.1f}"]
        for mode in ("per-batch", "per-sample"):
            ratio = paired_ratio(times[mode], times["stock"])
            extra_ms = (median(embedding_times[mode]) - median(embedding_times["stock"])) * 1e3
            row += [
                f"{median(times[mode]) * 1e3:.1f}",
                f"{ratio:.3f}",
                f"{extra_ms:+.2f} ({extra_ms / stock_ms:+.2%})",
            ]
            summary[(preset, batch_size, mode)] = (ratio, 1 + extra_ms / stock_ms)
        row.append(f"{max(spread(values) for values in times.values()):.1%}")
        rows.append(row)
        print(
            f"done {PRESET_NAMES[preset]} batch {batch_size}: {num_rounds} rounds, load {load_average()}", flush=True
        )
        del mjp, stock, steps, embeddings

    headers = ["model", "batch", "rounds", "stock ms"]
    for mode in ("per-batch", "per-sample"):
        headers += [f"MJP {mode} ms", "step ratio", "embeddings extra ms (share of step)"]
    headers.append("noise")
    print()
    print(markdown_table(headers, rows))
    print()
    print("step ratio: median over rounds of MJP step / stock step. noise: largest half-IQR / median of a variant.")
    print(f"load average at end: {load_average()}")

    preset = "demo" if args.quick else "small"
    batch_size = max(batch for (name, batch, _) in summary if name == preset)
    per_batch, per_batch_attributed = summary[(preset, batch_size, "per-batch")]
    per_sample, per_sample_attributed = summary[(preset, batch_size, "per-sample")]
    print(
        f"train_step overhead: {per_batch:.3f} ({PRESET_NAMES[preset]} batch {batch_size} per-batch, target <= "
        f"{TARGET_PER_BATCH}: {verdict(per_batch, TARGET_PER_BATCH, quick=args.quick)}; per-sample {per_sample:.3f}, target <= "
        f"{TARGET_PER_SAMPLE}: {verdict(per_sample, TARGET_PER_SAMPLE, quick=args.quick)}; from the embeddings alone "
        f"{per_batch_attributed:.4f} / {per_sample_attributed:.4f})"
    )


if __name__ == "__main__":
    main()
