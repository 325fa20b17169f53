"""What the privacy audit costs: wall time per image and per attack of `mjp_hf.evaluation.privacy`'s default audit,
on the demo preset and on a ViT-S/16 at 224x224 (random weights: only the time matters), each next to one training
step of the same model (the batch-1 forward and backward a client computes, the unit every attack is built from).

The models are MJP models at the released `jigsaw_prob 0.5`, the heaviest default audit: both kinds of step are
attacked, and the multi-round attacker runs at jigsaw_prob 0.5 and 1 (8 rounds each). The analytic attacks
(textbook, prior, refined, multi-round) must finish 8 images of a ViT-S/16 within 10 minutes on a 2-core CPU; the
optimisation attacks run within the budget given (`--optimization-seconds` per run, one run per step attacked and
kind of optimisation) and are reported apart.

    python benchmarks/privacy_audit.py                    # demo and ViT-S/16, 8 images each (~20 min on 2 cores)
    python benchmarks/privacy_audit.py --threads 2        # the 2-core figure
    python benchmarks/privacy_audit.py --quick            # smoke run: demo and a toy ViT, 1 image, a few seconds
"""

import argparse
import time

import torch

from mjp_hf import MJPViTForImageClassification
from mjp_hf.evaluation import privacy
from mjp_hf.evaluation.common import PixelNormalization
from mjp_hf.training.presets import config_from_preset


if not __package__:  # run as a file, `python benchmarks/privacy_audit.py`: see _package.py
    __package__ = __import__("_package").package()

from ._timing import add_common_arguments, describe_machine, load_average, markdown_table, setup, verdict  # noqa: E402


ANALYTIC_LIMIT_S = 600.0  # the analytic attacks on 8 images of a ViT-S/16, on a 2-core CPU
SHAPES = {
    "demo": ("demo", {}),
    "ViT-S/16 224": ("small", {}),
    # --quick: a ViT of the small preset's depth pattern at toy size.
    "toy ViT": (
        "small",
        dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, intermediate_size=128),
    ),
}


def build(shape: str, device: torch.device):
    preset, overrides = SHAPES[shape]
    config = config_from_preset(preset, num_labels=10, jigsaw_prob=0.5, **overrides)
    torch.manual_seed(0)
    return MJPViTForImageClassification(config).to(device).eval()


def training_step_seconds(model, pixel_values, labels, repeats: int) -> float:
    privacy.training_step_seconds(model, pixel_values, labels, repeats=1)  # warm-up
    return privacy.training_step_seconds(model, pixel_values, labels, repeats=repeats)


def per_attack_seconds(report: dict) -> dict[str, float]:
    """Mean seconds per image of each attack, summed over the kinds of step; the multi-round attacker and the
    optimisation's calibration apart."""
    images = report["per_image"]
    totals: dict[str, float] = {}
    for entry in images:
        for step in entry["steps"].values():
            for name in privacy.SINGLE_STEP_ATTACKS:
                if name in step and step[name].get("seconds") is not None:
                    totals[name] = totals.get(name, 0.0) + step[name]["seconds"]
        for probability, seconds in entry.get("multi_round_seconds", {}).items():
            totals[f"multi_round (p {probability})"] = totals.get(f"multi_round (p {probability})", 0.0) + seconds
        calibration = entry.get("optimization_calibration")
        if calibration:
            totals["optimization calibration"] = totals.get("optimization calibration", 0.0) + sum(
                calibration["seconds"].values()
            )
    return {name: value / len(images) for name, value in totals.items()}


def audit(model, num_images: int, budget: privacy.OptimizationBudget, seed: int) -> tuple[dict, float]:
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.rand(
        num_images, config.num_channels, config.image_size, config.image_size, generator=generator
    )
    normalization = PixelNormalization()
    pixel_values = normalization.normalize(pixel_values).to(model.device)
    labels = torch.randint(config.num_labels, (num_images,), generator=generator).to(model.device)
    start = time.perf_counter()
    report, _ = privacy.evaluate_privacy(
        model, pixel_values, labels, normalization, optimization=budget, seed=seed, progress=False
    )
    return report, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--num-images", type=int, default=8, help="images audited per model (default 8)")
    parser.add_argument(
        "--optimization-seconds",
        type=float,
        default=60.0,
        help="optimisation budget per run (one image, one step, from scratch or refined), as the CLI's --max_seconds",
    )
    parser.add_argument("--optimization-steps", type=int, default=300, help="as the CLI's --steps")
    parser.add_argument(
        "--shapes", nargs="+", choices=sorted(SHAPES), default=None, help="default: demo, ViT-S/16 224"
    )
    args = parser.parse_args(argv)
    if args.num_images < 1 or args.optimization_seconds <= 0 or args.optimization_steps < 1:
        raise SystemExit("--num-images and --optimization-steps must be at least 1, --optimization-seconds above 0.")
    device = setup(args)
    if args.quick:
        args.num_images, args.optimization_seconds, args.optimization_steps = 1, 0.5, 2
    shapes = args.shapes or (["demo", "toy ViT"] if args.quick else ["demo", "ViT-S/16 224"])
    budget = privacy.OptimizationBudget(steps=args.optimization_steps, max_seconds=args.optimization_seconds)

    print("# privacy_audit: the default audit's wall time per image and per attack, against one training step")
    print("\n".join(describe_machine(device, clock=_WallClock(device))))
    print(
        f"{args.num_images} random image(s) per model, MJP at jigsaw_prob 0.5 (both kinds of step, multi-round at 0.5 "
        f"and 1, k up to 8); optimisation budget per run: {args.optimization_steps} iterations or "
        f"{args.optimization_seconds:g} s"
    )
    print()
    rows, summary = [], []
    for shape in shapes:
        model = build(shape, device)
        probe = torch.randn(1, model.config.num_channels, model.config.image_size, model.config.image_size)
        step = training_step_seconds(model, probe.to(device), torch.zeros(1, dtype=torch.long, device=device), 3)
        report, total = audit(model, args.num_images, budget, args.seed)
        seconds = per_attack_seconds(report)
        per_image = total / args.num_images
        # Everything but the optimisation: the client steps, the analytic attacks, the multi-round attacker, scoring.
        analytic = per_image - sum(value for name, value in seconds.items() if name.startswith("optimization"))
        for name, value in sorted(seconds.items()):
            rows.append([shape, name, f"{value:.2f}", f"{value / step:,.0f}"])
        label = "audit without the optimisation (client steps, analytic and multi-round attacks, scoring)"
        rows.append([shape, label, f"{analytic:.2f}", f"{analytic / step:,.0f}"])
        rows.append([shape, "whole audit, per image", f"{per_image:.2f}", f"{per_image / step:,.0f}"])
        rows.append([shape, "one training step (batch 1)", f"{step:.4f}", "1"])
        summary.append((shape, per_image, step, analytic * args.num_images))
        print(f"done {shape}: {total:.1f} s for {args.num_images} image(s); load {load_average()}", flush=True)
        del model

    print()
    print(markdown_table(["model", "attack", "s per image", "x one training step"], rows))
    print()
    print("Per image: the mean over the images of each attack's wall time, summed over the kinds of step attacked.")
    print(f"load average at end: {load_average()}")
    parts = []
    for shape, per_image, step, analytic_all in summary:
        part = f"{shape} {per_image:.1f} s per image ({per_image / step:,.0f} training steps)"
        if shape == "ViT-S/16 224":
            scaled = analytic_all * 8 / args.num_images
            part += (
                f", analytic attacks on 8 images {scaled / 60:.1f} min "
                f"({verdict(scaled, ANALYTIC_LIMIT_S, quick=args.quick)}: <= 10 min on a 2-core CPU)"
            )
        parts.append(part)
    print("privacy_audit time per image: " + "; ".join(parts))


class _WallClock:
    """`describe_machine` names the clock; the audit times itself in wall time."""

    def __init__(self, device):
        self.device = device
        self.description = "wall time (the audit's own per-attack timings)"


if __name__ == "__main__":
    main()
