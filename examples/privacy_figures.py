#!/usr/bin/env python
"""The privacy figures of `docs/PRIVACY.md`: the gradient-inversion audit of briefly trained demo-preset models.

Trains, through the model API, a ViT with standard position embeddings (`jigsaw_prob 0`, no DALR head) and one
MJP model per (jigsaw ratio, jigsaw_prob) pair, all from the same seed and on the same Fashion-MNIST batches, then
runs `python -m mjp_hf.evaluation.privacy` (in process) on each with `--jigsaw auto`, the jigsaw ratio the model
trained with, and every attack: the optimisation from scratch (the generic attacker, with its calibration on the
model's plain step) on the models of `--scratch_models`, the optimisation refined from the analytic image on all.
The multi-round attacker runs at the model's own `jigsaw_prob`. `--audit NAME=DIR` audits more saved model folders
the same way (e.g. models trained with the example's full recipe).

    python examples/privacy_figures.py --output_dir docs/privacy --work_dir /tmp/mjp_privacy_figures

writes `privacy_figures.md` (the tables) and `privacy_figures.json` (every summary) in `--output_dir`; trained
models and the raw audits (`privacy.json`, `privacy.png`) go to `--work_dir`, and are reused when the command is
run again with the same audit flags.
"""

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mjp_hf import MJPViTForImageClassification
from mjp_hf.data import load_fashion_mnist_arrays
from mjp_hf.evaluation import privacy
from mjp_hf.evaluation.common import PixelNormalization, load_model
from mjp_hf.training.presets import config_from_preset
from mjp_hf.utils import software_versions


STANDARD = "standard-pe"
ATTACK_COLUMNS = (
    ("analytic", "textbook analytic"),
    ("analytic_prior", "analytic + TV prior"),
    ("analytic_refined", "prior, refined"),
    ("optimization", "optimisation from scratch"),
    ("optimization_refined", "optimisation refined"),
)


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
    parser.add_argument(
        "--optimization_steps", type=int, default=3000, help="Optimisation attacks: L-BFGS iterations per run."
    )
    parser.add_argument(
        "--optimization_seconds", type=float, default=45.0, help="Optimisation attacks: wall-time limit per run."
    )
    parser.add_argument("--optimization_restarts", type=int, default=1, help="Optimisation from scratch: restarts.")
    parser.add_argument(
        "--scratch_models",
        nargs="*",
        default=None,
        help="Models the optimisation from scratch runs on (default: the standard-PE model and the jigsaw_prob 1 "
        "models, besides every --audit folder).",
    )
    parser.add_argument(
        "--audit", nargs="*", default=[], metavar="NAME=DIR", help="Saved model folders audited as well."
    )
    parser.add_argument("--multi_round_counts", default="1,2,4,8", help="Rounds k of the multi-round attacker.")
    parser.add_argument("--seed", type=_whole(0, 2**32 - 1), default=0)
    args = parser.parse_args(argv)
    for item in args.audit:
        if "=" not in item:
            parser.error(f"--audit {item!r} is not NAME=DIR; pass e.g. vit-demo=/work/models/vit-demo-seed0.")
    return args


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
    record = {
        "name": name,
        "overrides": overrides,
        "train_steps": args.train_steps,
        "batch_size": args.batch_size,
        "seconds": round(time.perf_counter() - start, 1),
        "test_accuracy_2000": test_accuracy(model),
    }
    model.save_pretrained(directory)
    (directory / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def test_accuracy(model, count: int = 2000) -> float:
    normalization = PixelNormalization()
    test_gray, test_labels = load_fashion_mnist_arrays("test")
    with torch.no_grad():
        logits = model(normalization.from_uint8(np.repeat(test_gray[:count][..., None], 3, axis=-1))).logits
    return float((logits.argmax(-1).numpy() == test_labels[:count]).mean())


def audit_argv(model_dir: Path, out: Path, args, scratch: bool, own_prob: float | None) -> list[str]:
    attacks = ["analytic", "analytic_prior", "analytic_refined", "optimization_refined"]
    if scratch:
        attacks.append("optimization")
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
        "--max_seconds",
        str(args.optimization_seconds),
        "--restarts",
        str(args.optimization_restarts),
        "--seed",
        str(args.seed),
    ]
    if own_prob:
        argv += ["--multi_round_probs", str(own_prob), "--multi_round_counts", args.multi_round_counts]
        attacks.append("multi_round")
    return argv + ["--attacks", ",".join(attacks)]


def audit(model_dir: Path, out: Path, argv: list[str]) -> dict:
    """The audit's report, reused from `out` when it was made with the same flags."""
    flags = out / "audit_flags.json"
    if (out / "privacy.json").is_file() and flags.is_file() and json.loads(flags.read_text()) == argv:
        report = json.loads((out / "privacy.json").read_text())
        # Audits made before the date was recorded: the file's own time.
        modified = datetime.datetime.fromtimestamp((out / "privacy.json").stat().st_mtime, datetime.timezone.utc)
        report.setdefault("made_utc", modified.strftime("%Y-%m-%d %H:%M"))
        return report
    start = time.perf_counter()
    report = privacy.main(argv + ["--overwrite"])
    report["audit_seconds"] = round(time.perf_counter() - start, 1)
    report["made_utc"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    (out / "privacy.json").write_text(json.dumps(report, indent=2) + "\n")
    flags.write_text(json.dumps(argv) + "\n")
    return report


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _cell(metrics) -> str:
    if metrics is None or metrics.get("psnr") is None:
        return "-"
    return f"{metrics['psnr']:.1f} dB, {_pct(metrics['recovered_fraction_textured'])}"


def attack_table(records: dict) -> list[str]:
    lines = [
        "Each cell: mean PSNR, then the share of textured patches (pixel range > 0.1) rebuilt in place at >= 20 dB.",
        "The calibration is the optimisation from scratch on the same model's plain step, at the same budget: the "
        "from-scratch figures count (and enter the headline) only when it reaches 20 dB.",
        "",
        "| model | test acc. | step | "
        + " | ".join(label for _, label in ATTACK_COLUMNS)
        + " | headline (best per image) | calibration from scratch |",
        "|---" * (len(ATTACK_COLUMNS) + 5) + "|",
    ]
    for name, record in records.items():
        summary = record["audit"]["summary"]
        optimization = summary.get("optimization", {})
        calibration = "-"
        if "calibration_psnr" in optimization:
            verdict = "inconclusive" if optimization["inconclusive"] else "conclusive"
            calibration = (
                f"{optimization['calibration_psnr']:.1f} dB, "
                f"{_pct(optimization['calibration_recovered_fraction_textured'])}: {verdict}"
            )
        rows = [(kind, summary["by_step"][kind]) for kind in record["audit"]["step_kinds"]]
        if len(rows) > 1:
            rows.append(("expected per step", summary))
        for kind, figures in rows:
            cells = " | ".join(_cell(figures.get(attack)) for attack, _ in ATTACK_COLUMNS)
            lines.append(
                f"| {name} | {_pct(record['test_accuracy'])} | {kind} | {cells} | {_cell(figures['headline'])} | "
                f"{calibration} |"
            )
    return lines


def multi_round_table(records: dict) -> list[str]:
    lines = [
        "",
        "Multi-round attacker at the model's own jigsaw_prob (the same image in k rounds; round 1 is the audited step; "
        "attacker's own per-patch choice / headline, the best of every reconstruction it holds):",
        "",
    ]
    header = False
    for name, record in records.items():
        multi = record["audit"]["summary"].get("multi_round")
        if not multi or "skipped" in multi:
            continue
        for prob, by_k in multi.items():
            if not header:
                lines.append(
                    "| model | one step (expected) | "
                    + " | ".join(f"k = {k}" for k in by_k)
                    + " | rounds with a plain step |"
                )
                lines.append("|---" * (len(by_k) + 3) + "|")
                header = True
            single = _cell(record["audit"]["summary"]["headline"])
            cells = [f"{_cell(by_k[k]['best_of_rounds'])} / {_cell(by_k[k]['headline'])}" for k in by_k]
            plain = ", ".join(f"{by_k[k]['trials_with_plain_round']}/{by_k[k]['trials']}" for k in by_k)
            lines.append(f"| {name} (p {prob}) | {single} | " + " | ".join(cells) + f" | {plain} |")
    return lines


def budget_lines(records: dict, args) -> list[str]:
    lines = [
        "",
        f"Optimisation budget per run (one image, one step): {args.optimization_steps} L-BFGS iterations or "
        f"{args.optimization_seconds:g} s, {args.optimization_restarts} start(s) from scratch. Audit wall time "
        "(shared 2-core CPU, one thread):",
        "",
        "| model | audit made (UTC) | audit time | s per image |",
        "|---|---|---|---|",
    ]
    for name, record in records.items():
        seconds = record["audit"].get("audit_seconds")
        if seconds is not None:
            made = record["audit"].get("made_utc") or "-"
            lines.append(f"| {name} | {made} | {seconds / 60:.1f} min | {seconds / args.num_images:.0f} |")
    return lines + ["", f"Versions: {software_versions()}."]


def tables(records: dict, args) -> str:
    return "\n".join(attack_table(records) + multi_round_table(records) + budget_lines(records, args)) + "\n"


def main(argv=None):
    args = parse_args(argv)
    work, output = Path(args.work_dir), Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    models = {STANDARD: {"jigsaw_prob": 0.0, "dalr_head": "none"}}
    for prob in args.probs:
        for ratio in args.ratios:
            models[model_name(ratio, prob)] = {"jigsaw_ratio": ratio, "jigsaw_prob": prob}
    scratch = (
        set(args.scratch_models)
        if args.scratch_models is not None
        else {STANDARD} | {name for name, overrides in models.items() if overrides["jigsaw_prob"] == 1.0}
    )
    folders = {}
    for name, overrides in models.items():
        training = train(name, overrides, args, work / "models" / name)
        print(f"{name}: trained, test accuracy {training['test_accuracy_2000']:.3f}", flush=True)
        folders[name] = (work / "models" / name, training["test_accuracy_2000"], overrides["jigsaw_prob"])
    for item in args.audit:
        name, directory = item.split("=", 1)
        model = load_model(directory)
        folders[name] = (Path(directory), test_accuracy(model), float(getattr(model.config, "jigsaw_prob", 0.0)))
        scratch.add(name)
    records = {}
    for name, (directory, accuracy, own_prob) in folders.items():
        flags = audit_argv(directory, work / "audits" / name, args, name in scratch, own_prob)
        report = audit(directory, work / "audits" / name, flags)
        records[name] = {
            "test_accuracy": accuracy,
            "audit": {
                key: report.get(key) for key in ("step_kinds", "summary", "optimization", "audit_seconds", "made_utc")
            },
        }
        print(f"{name}: audited", flush=True)
    (output / "privacy_figures.json").write_text(json.dumps(records, indent=2) + "\n")
    command = "python examples/privacy_figures.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (output / "privacy_figures.md").write_text(f"# Privacy figures\n\n`{command.strip()}`\n\n" + tables(records, args))
    print((output / "privacy_figures.md").read_text())


if __name__ == "__main__":
    main()
