#!/usr/bin/env python
"""The privacy figures of `docs/PRIVACY.md`: the gradient-inversion audit of briefly trained demo-preset models.

Trains, through the model API, a ViT with standard position embeddings (`jigsaw_prob 0`, no DALR head) and one
MJP model per (jigsaw ratio, jigsaw_prob) pair, all from the same seed and on the same Fashion-MNIST batches, then
runs `python -m mjp_hf.evaluation.privacy` (in process) on each with `--jigsaw auto`, the jigsaw ratio the model
trained with, and every attack. The multi-round attacker runs at the model's own `jigsaw_prob`.

    python examples/privacy_figures.py --output_dir docs/privacy --work_dir /tmp/mjp_privacy_figures

writes `privacy_figures.md` (the tables) and `privacy_figures.json` (every summary) in `--output_dir`; trained
models and the raw audits (`privacy.json`, `privacy.png`) go to `--work_dir`, and are reused when the command is
run again.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mjp_hf import MJPViTForImageClassification
from mjp_hf.data import load_fashion_mnist_arrays
from mjp_hf.evaluation import privacy
from mjp_hf.evaluation.common import PixelNormalization
from mjp_hf.training.presets import config_from_preset


STANDARD = "standard-pe"


def _fraction(value: str) -> float:
    """argparse `type=` of a fraction in [0, 1] (a jigsaw ratio or probability), refused at parse time."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not 0 <= number <= 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{value} is out of range; pass a fraction in [0, 1]")
    return number


def _whole(low: int, high: int | None = None):
    """argparse `type=` of a whole number in [low, high], refused at parse time."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if number < low or (high is not None and number > high):
            span = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{number} is out of range; pass a whole number {span}")
        return number

    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="docs/privacy", help="Where the tables and the JSON go.")
    parser.add_argument("--work_dir", default="/tmp/mjp_privacy_figures", help="Trained models and raw audits.")
    parser.add_argument("--ratios", nargs="+", type=_fraction, default=[0.1, 0.3, 0.5], help="Jigsaw ratios trained.")
    parser.add_argument("--probs", nargs="+", type=_fraction, default=[0.5, 1.0], help="jigsaw_prob values trained.")
    parser.add_argument("--train_steps", type=_whole(1), default=300, help="AdamW steps per model.")
    parser.add_argument("--batch_size", type=_whole(1), default=64)
    parser.add_argument("--num_images", type=int, default=8, help="Test images attacked per model.")
    parser.add_argument("--optimization_steps", type=int, default=100, help="Optimisation attack: steps per image.")
    parser.add_argument("--multi_round_counts", default="1,2,4,8", help="Rounds k of the multi-round attacker.")
    parser.add_argument("--seed", type=_whole(0, 2**32 - 1), default=0)
    return parser.parse_args(argv)


def model_name(ratio: float, prob: float) -> str:
    return f"mjp-ratio{ratio}-p{prob}"


def train(name: str, overrides: dict, args, directory: Path) -> dict:
    """A demo-preset model trained for `--train_steps` AdamW steps of `--batch_size` Fashion-MNIST training
    images (the same batches for every model), each step taken as the model trains (its own jigsaw coin flips)."""
    if (directory / "config.json").is_file():
        return json.loads((directory / "training.json").read_text())
    torch.manual_seed(args.seed)
    model = MJPViTForImageClassification(config_from_preset("demo", num_labels=10, **overrides))
    normalization = PixelNormalization()
    gray, labels = load_fashion_mnist_arrays("train")
    order = np.random.default_rng(args.seed).permutation(len(gray))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    model.train()
    start = time.perf_counter()
    for step in range(args.train_steps):
        index = order[(step * args.batch_size) % len(order) :][: args.batch_size]
        pixel_values = normalization.from_uint8(np.repeat(gray[index][..., None], 3, axis=-1))
        loss = model(pixel_values, labels=torch.as_tensor(labels[index])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    test_gray, test_labels = load_fashion_mnist_arrays("test")
    with torch.no_grad():
        logits = model(normalization.from_uint8(np.repeat(test_gray[:2000][..., None], 3, axis=-1))).logits
    record = {
        "name": name,
        "overrides": overrides,
        "train_steps": args.train_steps,
        "batch_size": args.batch_size,
        "seconds": round(time.perf_counter() - start, 1),
        "test_accuracy_2000": float((logits.argmax(-1).numpy() == test_labels[:2000]).mean()),
    }
    model.save_pretrained(directory)
    (directory / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def audit(name: str, overrides: dict, model_dir: Path, out: Path, args) -> dict:
    if (out / "privacy.json").is_file():
        return json.loads((out / "privacy.json").read_text())
    attacks = "analytic,analytic_prior,analytic_refined,optimization"
    argv = [
        "--model_name_or_path",
        str(model_dir),
        "--output_dir",
        str(out),
        "--device",
        "cpu",
        "--jigsaw",
        "auto",
        "--num_images",
        str(args.num_images),
        "--steps",
        str(args.optimization_steps),
        "--seed",
        str(args.seed),
        "--max_seconds",
        "600",
    ]
    if name != STANDARD:
        argv += ["--multi_round_probs", str(overrides["jigsaw_prob"]), "--multi_round_counts", args.multi_round_counts]
        attacks += ",multi_round"
    return privacy.main(argv + ["--attacks", attacks])


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _cell(metrics) -> str:
    if metrics is None:
        return "-"
    return f"{metrics['psnr']:.1f} dB, {_pct(metrics['recovered_fraction_textured'])}"


def tables(records: dict) -> str:
    lines = [
        "Each cell: mean PSNR, then the share of textured patches (pixel range > 0.1) rebuilt in place at >= 20 dB.",
        "",
        "| model | test acc. | step | textbook analytic | analytic + TV prior | prior, refined | optimisation | "
        "headline (best per image) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, record in records.items():
        summary = record["audit"]["summary"]
        optimization = summary.get("optimization", {})
        flag = " (inconclusive)" if optimization.get("inconclusive") else ""
        rows = [(kind, summary["by_step"][kind]) for kind in record["audit"]["step_kinds"]]
        if len(rows) > 1:
            rows.append(("expected per step", summary))
        for kind, figures in rows:
            lines.append(
                f"| {name} | {100 * record['training']['test_accuracy_2000']:.1f}% | {kind} | "
                f"{_cell(figures['analytic'])} | {_cell(figures['analytic_prior'])} | "
                f"{_cell(figures['analytic_refined'])} | "
                f"{_cell(figures.get('optimization'))}{flag} | {_cell(figures['headline'])} |"
            )
    lines += [
        "",
        "Multi-round attacker at the model's own jigsaw_prob (same image in k rounds; attacker's own per-patch choice "
        "/ headline):",
        "",
    ]
    header = False
    for name, record in records.items():
        multi = record["audit"]["summary"].get("multi_round")
        if not multi or "skipped" in multi:
            continue
        for prob, by_k in multi.items():
            if not header:
                lines.append("| model | " + " | ".join(f"k = {k}" for k in by_k) + " | rounds with a plain step |")
                lines.append("|---" * (len(by_k) + 2) + "|")
                header = True
            cells = [f"{_cell(by_k[k]['best_of_rounds'])} / {_cell(by_k[k]['headline'])}" for k in by_k]
            plain = ", ".join(f"{by_k[k]['trials_with_plain_round']}/{by_k[k]['trials']}" for k in by_k)
            lines.append(f"| {name} (p {prob}) | " + " | ".join(cells) + f" | {plain} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    work, output = Path(args.work_dir), Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    models = {STANDARD: {"jigsaw_prob": 0.0, "dalr_head": "none"}}
    for prob in args.probs:
        for ratio in args.ratios:
            models[model_name(ratio, prob)] = {"jigsaw_ratio": ratio, "jigsaw_prob": prob}
    records = {}
    for name, overrides in models.items():
        training = train(name, overrides, args, work / "models" / name)
        print(f"{name}: trained, test accuracy {training['test_accuracy_2000']:.3f}", flush=True)
        report = audit(name, overrides, work / "models" / name, work / "audits" / name, args)
        records[name] = {"training": training, "audit": {k: report[k] for k in ("step_kinds", "summary")}}
        print(f"{name}: audited", flush=True)
    (output / "privacy_figures.json").write_text(json.dumps(records, indent=2) + "\n")
    command = "python examples/privacy_figures.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (output / "privacy_figures.md").write_text(f"# Privacy figures\n\n`{command.strip()}`\n\n" + tables(records))
    print((output / "privacy_figures.md").read_text())


if __name__ == "__main__":
    main()
