"""What a defended training step costs against a plain one, measured side by side: DP-SGD through Opacus (per-example
gradients by its hooks, or by functorch for every layer), local noise and gradient pruning (the training callback's
work on the batch gradient), at the demo preset (the main job) by default.

A plain step is the main job's: forward, cross-entropy, backward, clipping at 5.0, AdamW. DP-SGD replaces the
clipping with Opacus' `DPOptimizer` (per-example clipping at C = 1, noise σ = 1, AdamW) on `GradSampleHooks`, as
`mjp_hf.training.dp_sgd` does in the Trainer; local noise (σ = 1, C = 1) and pruning (90% zeroed) add
`mjp_hf.training.defenses.clip_and_noise` / `prune` over the clipped gradient, as `GradientDefenseCallback` does.
The model is the demo MJP-ViT's own `to_vit()` export (stock transformers ViT): MJP-ViT itself enters Opacus once its
embeddings hold no buffers; `--mjp` adds its plain and DP-SGD steps when Opacus accepts it. Poisson sampling is left
out (a data-side cost: one uniform draw per training example per step); its batches vary around the fixed batch used.

Variants are interleaved (one call each per round, order rotating), one thread, process CPU time by default; a ratio
is the median of per-round ratios to the plain step, with a bootstrap 95% interval.

    python benchmarks/dp_step.py                  # demo preset, batch 128, ~12 rounds (a few minutes)
    python benchmarks/dp_step.py --mjp            # also MJP-ViT, when Opacus accepts it
    python benchmarks/dp_step.py --quick          # smoke run: batch 8, 3 rounds
"""

import argparse
import copy
import warnings

import torch

from mjp_hf import MJPViTForImageClassification
from mjp_hf.training.defenses import clip_and_noise, keyed_generator, prune, require_opacus
from mjp_hf.training.presets import config_from_preset
from mjp_hf.utils import bounded


if not __package__:  # run as a file, `python benchmarks/dp_step.py`: see _package.py
    __package__ = __import__("_package").package()

from ._timing import (  # noqa: E402
    Clock,
    add_common_arguments,
    describe_machine,
    load_average,
    markdown_table,
    median,
    paired_ratio,
    paired_ratio_interval,
    setup,
    spread,
    time_interleaved,
)


NUM_LABELS = 10
TRAINER_CLIP = 5.0  # the main job's max_grad_norm
SIGMA, CLIP = 1.0, 1.0
PRUNE_RATIO = 0.9
# The demo preset's main job: 60,000 Fashion-MNIST training images, batch 128, 5 epochs.
MAIN_JOB_STEPS = 5 * (60_000 // 128)


def plain_step(model, pixel_values, labels, defend=None):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    counter = iter(range(10**9))

    def step():
        model(pixel_values, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), TRAINER_CLIP)
        if defend is not None:
            named = [(name, parameter) for name, parameter in model.named_parameters() if parameter.grad is not None]
            defended = defend({name: parameter.grad for name, parameter in named}, next(counter))
            with torch.no_grad():
                for name, parameter in named:
                    parameter.grad.copy_(defended[name])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def dp_sgd_step(model, pixel_values, labels, functorch: bool):
    from opacus.grad_sample import GradSampleHooks
    from opacus.optimizers import DPOptimizer

    GradSampleHooks(model, loss_reduction="mean", force_functorch=functorch)
    optimizer = DPOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-4),
        noise_multiplier=SIGMA,
        max_grad_norm=CLIP,
        expected_batch_size=len(labels),
    )
    counter = iter(range(10**9))

    def step():
        optimizer.generator = keyed_generator(0, "dp_sgd_noise", next(counter))
        model(pixel_values, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def local_noise(gradients, step):
    return clip_and_noise(gradients, CLIP, SIGMA, keyed_generator(0, "local_noise", step))


def pruned(gradients, step):
    return prune(gradients, PRUNE_RATIO)


def opacus_accepts(model) -> bool:
    from opacus.grad_sample import GradSampleHooks

    return not GradSampleHooks.validate(model, strict=False)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--preset", default="demo", help="model shape (default: demo, the main job's)")
    parser.add_argument(
        "--batch-size", type=bounded(int, minimum=1), default=None, help="default 128 (the main job's); 8 with --quick"
    )
    parser.add_argument(
        "--rounds", type=bounded(int, minimum=1), default=None, help="timed rounds (default 12; 3 with --quick)"
    )
    parser.add_argument("--mjp", action="store_true", help="also MJP-ViT's plain and DP-SGD steps, if Opacus takes it")
    args = parser.parse_args(argv)
    require_opacus()
    device = setup(args)
    clock = Clock(device, args.clock)
    batch_size = args.batch_size or (8 if args.quick else 128)
    rounds = args.rounds or (3 if args.quick else 12)
    overrides = {"num_labels": NUM_LABELS}
    if args.quick:
        overrides["num_hidden_layers"] = 1
    mjp = MJPViTForImageClassification(config_from_preset(args.preset, **overrides)).to(device).train()
    stock = mjp.to_vit().train()
    config = mjp.config
    generator = torch.Generator().manual_seed(args.seed)
    pixel_values = torch.randn(
        batch_size, config.num_channels, config.image_size, config.image_size, generator=generator
    ).to(device)
    labels = torch.randint(0, NUM_LABELS, (batch_size,), generator=generator).to(device)

    variants = {
        "plain": plain_step(copy.deepcopy(stock), pixel_values, labels),
        "DP-SGD, Opacus hooks": dp_sgd_step(copy.deepcopy(stock), pixel_values, labels, functorch=False),
        "DP-SGD, Opacus functorch": dp_sgd_step(copy.deepcopy(stock), pixel_values, labels, functorch=True),
        "local noise": plain_step(copy.deepcopy(stock), pixel_values, labels, local_noise),
        f"pruning {PRUNE_RATIO:g}": plain_step(copy.deepcopy(stock), pixel_values, labels, pruned),
    }
    mjp_note = None
    if args.mjp:
        if opacus_accepts(mjp):
            variants["MJP-ViT plain"] = plain_step(copy.deepcopy(mjp), pixel_values, labels)
            variants["MJP-ViT DP-SGD, hooks"] = dp_sgd_step(copy.deepcopy(mjp), pixel_values, labels, functorch=False)
        else:
            mjp_note = "MJP-ViT: Opacus refuses it (a trainable module with buffers); rows left out."

    print(f"# dp_step: a defended training step vs a plain one ({args.preset} preset, batch {batch_size})")
    print("\n".join(describe_machine(device, clock)))
    print(f"DP-SGD and local noise: sigma {SIGMA:g}, C {CLIP:g}; pruning: {PRUNE_RATIO:g} of each tensor zeroed")
    print()
    with warnings.catch_warnings():
        # torch's note that Opacus' full backward hooks fire on a module whose inputs need no gradient: expected.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        times = time_interleaved(variants, rounds=rounds, warmup=1, clock=clock)

    rows, ratios = [], {}
    for name, values in times.items():
        ratio = paired_ratio(values, times["plain"])
        low, high = paired_ratio_interval(values, times["plain"]) if len(values) > 1 else (ratio, ratio)
        ratios[name] = ratio
        rows.append(
            [name, f"{median(values) * 1e3:.1f}", f"{ratio:.2f}", f"[{low:.2f}, {high:.2f}]", f"{spread(values):.1%}"]
        )
    print(markdown_table(["step", "median ms", "ratio to plain", "95% interval", "noise"], rows))
    print()
    plain_minutes = median(times["plain"]) * MAIN_JOB_STEPS / 60
    print(
        f"ratio: median over {rounds} rounds of (step / plain step). noise: half-IQR / median. At these medians the "
        f"main job's {MAIN_JOB_STEPS} training steps take {plain_minutes:.1f} min plain and "
        f"{plain_minutes * ratios['DP-SGD, Opacus hooks']:.1f} min with DP-SGD (hooks), steps alone, one thread."
    )
    if "MJP-ViT DP-SGD, hooks" in times:
        mjp_ratio = paired_ratio(times["MJP-ViT DP-SGD, hooks"], times["MJP-ViT plain"])
        print(f"MJP-ViT: a DP-SGD step (hooks) costs {mjp_ratio:.2f}x its own plain step.")
    if mjp_note:
        print(mjp_note)
    print(f"load average at end: {load_average()}")
    print(
        f"dp_step cost vs a plain step ({args.preset} batch {batch_size}): DP-SGD hooks "
        f"{ratios['DP-SGD, Opacus hooks']:.2f}x, functorch {ratios['DP-SGD, Opacus functorch']:.2f}x, local noise "
        f"{ratios['local noise']:.2f}x, pruning {ratios[f'pruning {PRUNE_RATIO:g}']:.2f}x"
    )


if __name__ == "__main__":
    main()
