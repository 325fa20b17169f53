"""Inference throughput of MJP-ViT in eval mode and of its `to_vit()` export against a stock transformers ViT (and a
timm ViT, where timm is installed) of the same shape, eager and sdpa attention, fp32 and bf16, side by side.

In eval mode MJP-ViT shuffles nothing; what it adds is Python bookkeeping and the DALR loss it reports (a two-layer
MLP over the position-embedding table, independent of the batch). The export is a plain `ViTForImageClassification`.

    python benchmarks/inference.py                        # ViT-S/16 at batch 8, demo at batch 64 (~5 min)
    python benchmarks/inference.py --batch-sizes 1 64     # other ViT-S/16 batch sizes
    python benchmarks/inference.py --quick                # smoke run, a few seconds
    python benchmarks/inference.py --device cuda --batch-sizes 1 64 256
"""

import argparse
import importlib.util

import torch
from transformers import ViTForImageClassification

from mjp_hf import MJPViTForImageClassification
from mjp_hf.training.presets import config_from_preset
from mjp_hf.utils import bounded


if not __package__:  # run as a file, `python benchmarks/inference.py`: see _package.py
    __package__ = __import__("_package").package()

from ._timing import (
    Clock,
    add_common_arguments,
    describe_machine,
    interval_verdict,
    load_average,
    markdown_table,
    median,
    median_interval,
    paired_ratio,
    paired_ratio_interval,
    parse_dtypes,
    setup,
    spread,
    time_interleaved,
)


TARGET = 0.99
NUM_LABELS = 1000
PRESET_NAMES = {"small": "ViT-S/16", "demo": "demo"}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def timm_available() -> bool:
    return importlib.util.find_spec("timm") is not None


def timm_vit(config, attn_implementation: str) -> torch.nn.Module:
    """A timm VisionTransformer of the config's shape (random weights: only the speed matters here)."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=config.image_size,
        patch_size=config.patch_size,
        in_chans=config.num_channels,
        num_classes=config.num_labels,
        embed_dim=config.hidden_size,
        depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        mlp_ratio=config.intermediate_size / config.hidden_size,
        qkv_bias=config.qkv_bias,
    )
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = attn_implementation == "sdpa"
    return model


def build_models(
    preset: str, attn_implementation: str, dtype: torch.dtype, device: torch.device, with_timm: bool, **overrides
):
    config = config_from_preset(preset, num_labels=NUM_LABELS, attn_implementation=attn_implementation, **overrides)
    mjp = MJPViTForImageClassification(config).eval()
    export = mjp.to_vit().eval()
    stock = ViTForImageClassification(export.config).eval()
    models = {"stock HF ViT": stock, "MJP eval": mjp, "to_vit() export": export}
    if with_timm:
        models["timm ViT"] = timm_vit(config, attn_implementation).eval()
    return {name: model.to(device=device, dtype=dtype) for name, model in models.items()}, config


def build_shells(preset: str, attn_implementation: str, dtype: torch.dtype, device: torch.device):
    """MJP and stock models of the preset with no encoder layer: all that MJP adds in eval (embeddings, DALR loss,
    Python of its forward) and nothing of the shared encoder, so their difference is measured without its noise."""
    models, _ = build_models(preset, attn_implementation, dtype, device, with_timm=False, num_hidden_layers=0)
    return {name: models[name] for name in ("stock HF ViT", "MJP eval")}


def forward_call(name: str, model: torch.nn.Module, pixel_values: torch.Tensor):
    if name == "timm ViT":
        return lambda: model(pixel_values)
    return lambda: model(pixel_values).logits


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument(
        "--batch-sizes", type=bounded(int, minimum=1), nargs="+", default=None, help="ViT-S/16 batch sizes (default 8)"
    )
    parser.add_argument(
        "--demo-batch-sizes",
        type=bounded(int, minimum=1),
        nargs="+",
        default=None,
        help="demo batch sizes (default 64)",
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        help="weights and inputs in these dtypes (default fp32 bf16; ViT-S/16 on a CPU fp32 only, as a CPU without "
        "native bf16 takes minutes for it)",
    )
    parser.add_argument("--attn", nargs="+", default=None, choices=("eager", "sdpa"), help="default: eager sdpa")
    parser.add_argument(
        "--budget-s",
        type=bounded(float, minimum=0, exclusive_minimum=True),
        default=25.0,
        help="time budget per ViT-S/16 configuration",
    )
    parser.add_argument("--min-rounds", type=bounded(int, minimum=1), default=5)
    parser.add_argument("--max-rounds", type=bounded(int, minimum=1), default=1000)
    args = parser.parse_args(argv)
    if args.max_rounds < args.min_rounds:
        parser.error(
            f"--max-rounds {args.max_rounds} is below --min-rounds {args.min_rounds}; raise it or lower that."
        )
    device = setup(args)
    dtypes = parse_dtypes(args.dtypes or (["fp32"] if args.quick else ["fp32", "bf16"]))
    attn_implementations = args.attn or (["sdpa"] if args.quick else ["eager", "sdpa"])
    small_dtypes = parse_dtypes(args.dtypes or (["fp32"] if device.type == "cpu" else ["fp32", "bf16"]))
    clock = Clock(device, args.clock)
    with_timm = timm_available()

    plan = [
        ("demo", batch, 1.0 if args.quick else 5.0, dtypes)
        for batch in (args.demo_batch_sizes or ([4] if args.quick else [64]))
    ]
    if not args.quick:
        plan += [("small", batch, args.budget_s, small_dtypes) for batch in (args.batch_sizes or [8])]

    print("# inference: images per second in eval mode, ratios against the stock transformers ViT")
    print("\n".join(describe_machine(device, clock)))
    print("timm: " + ("installed, compared" if with_timm else "not installed: the timm column is left out"))
    print()

    rows, worst = [], {}
    for preset, batch_size, budget_s, preset_dtypes in plan:
        for dtype in preset_dtypes:
            for attn in attn_implementations:
                models, config = build_models(preset, attn, dtype, device, with_timm)
                generator = torch.Generator(device="cpu").manual_seed(args.seed)
                pixel_values = torch.randn(
                    batch_size, config.num_channels, config.image_size, config.image_size, generator=generator
                ).to(device=device, dtype=dtype)
                calls = {name: forward_call(name, model, pixel_values) for name, model in models.items()}
                with torch.inference_mode():
                    start = clock.now()
                    time_interleaved(calls, rounds=0, warmup=2, clock=clock)
                    round_s = (clock.now() - start) / 2
                    num_rounds = max(args.min_rounds, min(args.max_rounds, int(budget_s / max(round_s, 1e-9))))
                    if args.quick:
                        num_rounds = 3
                    times = time_interleaved(calls, rounds=num_rounds, warmup=0, clock=clock)
                row = [PRESET_NAMES[preset], batch_size, DTYPE_NAMES[dtype], attn, num_rounds]
                for name in models:
                    images_per_s = batch_size / median(times[name])
                    ratio = paired_ratio(times["stock HF ViT"], times[name])
                    row.append(f"{images_per_s:.1f}" + ("" if name == "stock HF ViT" else f" ({ratio:.3f})"))
                    if name in ("MJP eval", "to_vit() export"):
                        low, high = paired_ratio_interval(times["stock HF ViT"], times[name], seed=args.seed)
                        row[-1] += f" [{low:.3f}, {high:.3f}]"
                        key = (preset, name)
                        # The configuration whose interval reaches lowest decides the verdict.
                        if low < worst.get(key, (float("inf"),))[0]:
                            worst[key] = (low, high, ratio)
                row.append(f"{max(spread(values) for values in times.values()):.1%}")
                # What MJP adds, from the encoder-less shells: a paired difference of fast calls, many rounds.
                shells = build_shells(preset, attn, dtype, device)
                shell_calls = {name: forward_call(name, model, pixel_values) for name, model in shells.items()}
                with torch.inference_mode():
                    start = clock.now()
                    time_interleaved(shell_calls, rounds=0, warmup=3, clock=clock)
                    shell_round_s = (clock.now() - start) / 3
                    shell_rounds = (
                        20 if args.quick else max(50, min(5000, int(budget_s / 4 / max(shell_round_s, 1e-9))))
                    )
                    shell_times = time_interleaved(shell_calls, rounds=shell_rounds, warmup=0, clock=clock)
                extras = [m - s for m, s in zip(shell_times["MJP eval"], shell_times["stock HF ViT"], strict=True)]
                extra, (extra_low, extra_high) = median(extras), median_interval(extras, seed=args.seed)
                full = median(times["stock HF ViT"])
                ratio_low, ratio_high = full / (full + extra_high), full / (full + extra_low)
                row.append(f"{extra * 1e3:+.3f} ms -> {full / (full + extra):.4f} [{ratio_low:.4f}, {ratio_high:.4f}]")
                key = (preset, "MJP extra")
                if ratio_low < worst.get(key, (float("inf"),))[0]:
                    worst[key] = (ratio_low, ratio_high, full / (full + extra))
                rows.append(row)
                print(
                    f"done {PRESET_NAMES[preset]} batch {batch_size} {DTYPE_NAMES[dtype]} {attn}: load {load_average()}",
                    flush=True,
                )
                del models, calls

    headers = (
        [
            "model",
            "batch",
            "dtype",
            "attention",
            "rounds",
            "stock HF ViT img/s",
            "MJP eval img/s (ratio)",
            "export img/s (ratio)",
        ]
        + (["timm img/s (ratio)"] if with_timm else [])
        + ["noise", "MJP extra (shells) -> ratio"]
    )
    print()
    print(markdown_table(headers, rows))
    print()
    print("ratio: median over rounds of (stock time / variant time), i.e. throughput relative to the stock HF ViT;")
    print(
        "[low, high]: its 95% bootstrap interval. The export is the stock class itself, so its interval shows the noise."
    )
    print(
        "MJP extra: median paired time difference of encoder-less MJP and stock models (embeddings, DALR loss, Python),"
    )
    print("and the ratio it implies for the full model: stock / (stock + extra), with its 95% interval.")
    print(f"load average at end: {load_average()}")
    preset = "demo" if args.quick else "small"
    low, high, ratio = worst[(preset, "MJP extra")]
    verdict = interval_verdict(low, high, TARGET, at_most=False, quick=args.quick)
    aa_low, aa_high, aa_ratio = worst[(preset, "to_vit() export")]
    print(
        f"inference throughput vs stock HF ViT: MJP eval {ratio:.4f} [{low:.4f}, {high:.4f}] from its measured extra "
        f"({verdict}, target >= {TARGET}); export = the stock class, measured {aa_ratio:.3f} [{aa_low:.3f}, "
        f"{aa_high:.3f}] (the noise of whole-model timing); worst configuration, {PRESET_NAMES[preset]}"
    )


if __name__ == "__main__":
    main()
