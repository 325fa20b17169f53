#!/usr/bin/env python
"""The paper's three claims at the demo main job's budget, and beside them the gradient defences a privacy team
already uses: which MJP setting to train with, whether DP-SGD, local noise or pruning does better, or MJP with
DP-SGD, and what each costs.

The claims (Ren et al., CVPR 2023): (1) position embeddings leak the input under gradient inversion; (2) naively
shuffling every patch protects it but costs accuracy; (3) "under a certain shuffle ratio", MJP keeps or improves
accuracy and robustness and protects privacy by a large margin.

Every variant is trained by `examples/run_image_classification.py` in a subprocess with the demo preset's full
schedule (the main job), seeds 0-2 by default, and differs only in its flags (`VARIANTS`): MJP settings, and the
defences, each at the main job's budget (docs/TRAINING.md): DP-SGD at sigma 0.001, 0.01 and 1.0 with C 1.0 (the
accuracy end, the least noise at which the audit's leak reaches its floor, and privacy first with epsilon below 1),
local noise at sigma 0.001 and 0.01 with C 1.0, gradient pruning at 0.5 and 0.9, and MJP p 1 ratio 0.25 with DP-SGD at
sigma 0.001 (`DP_SIGMAS` and the notes beside `VARIANTS` give each choice's reason, from a one-seed first look at
the defences). Each model then goes through the evaluations of `mjp_hf.evaluation` its
variant gets, each in its own process: privacy (every attack, both kinds of training step, the expected leak per step
at the model's `jigsaw_prob` and the exposure over k rounds; for a defence variant on the gradient its defence sends,
`audit_flags`), robustness and position. Finished trainings and evaluations are cached in `--work_dir`, and an
interrupted training resumes from its last checkpoint, so rerunning the command continues the study; with everything
cached it rebuilds the same tables.

The cost, and the cuts that fit the default grid in 3 h at `--parallel 2` on the 2-core machine (about 2.92 h by
`estimate_wall_seconds`, printed before the first run, from the figures in `COSTS` and `STEP_COST_RATIO`, each with its
source): the defence variants get the privacy audit only (no robustness or position evaluation); DP-SGD at sigma 0.01
and 1.0, local noise and pruning run on the first 2 of --seeds (`Variant.max_seeds`; `--seeds_for VARIANT=0,1,2`
restores a variant's seeds; over 2 seeds an interval is 3.6 times as wide as over 3). The generated README states them
too.

Statistics: per variant, the mean and a 95% Student-t interval over seeds; against the baseline, paired differences
(same seed, same data order) with their intervals; each claim is "held", "not held" or "not shown at this budget"
from those intervals (`CLAIM_MARGINS` states the lines), never from the means alone. The same holds for the defence
questions (`defence_verdicts`): among the variants within 1 point of the ViT's accuracy, which leaks least per step and
over 8 rounds, and whether MJP + DP-SGD beats both halves.

    python examples/mjp_study.py --output_dir docs/study --work_dir /tmp/mjp_study --parallel 2

(`--parallel 2`: two runs at a time, one thread each, which uses two cores better than one run on both; a run's
evaluations start as soon as its training ends.) `--variants`, `--seeds` and `--seeds_for VARIANT=0,1` select a
subset; the command then writes tables over that subset. It writes `README.md` (tables, verdicts, which setting for
which need with its cost, the grid and its cuts), `results.json`, `pareto.png` (accuracy against the leak per step
and against the exposure over 8 rounds, every variant) and, per run, every evaluation's JSON (and the images of the
first seed) under `per_seed/`.
"""

import argparse
import dataclasses
import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mjp_hf.evaluation.privacy import exposure_lower_bound  # noqa: E402
from mjp_hf.evaluation.robustness import SEVERITIES  # noqa: E402
from mjp_hf.evaluation.statistics import HELD, NOT_HELD, NOT_SHOWN, Interval, paired_difference, verdict  # noqa: E402
from mjp_hf.training.defense_arguments import DefenseArguments  # noqa: E402
from mjp_hf.training.defenses import Defense  # noqa: E402
from mjp_hf.utils import software_versions  # noqa: E402


TRAIN_SCRIPT = REPO / "examples" / "run_image_classification.py"
BASELINE = "baseline"
MAIN_JOB_STEPS = 5 * (60_000 // 128)  # the demo preset's 5 epochs of batch 128


EVALUATIONS = ("position", "robustness", "privacy")


@dataclass(frozen=True)
class Variant:
    """A trained variant: its title in the tables, its training flags, its `family` (which defence it is), the
    evaluations it gets and, when the default grid cuts it to fit the study's budget, how many of `--seeds` it runs
    (the first `max_seeds`; `--seeds_for` overrides)."""

    title: str
    flags: tuple[str, ...]
    family: str = "mjp"
    evaluations: tuple[str, ...] = EVALUATIONS
    max_seeds: int | None = None


# The defences' settings, each at the main job's budget (2345 steps, Poisson rate q = 128/60000, delta 1/N), picked from
# a one-seed first look (seed 0, 2026-12-02, this grid's flags): DP-SGD at sigma 0.3 / 0.5 / 1.0 cost 9.5 / 17.0 / 28.5
# points, local noise at 0.3 cost 40.7, and every sigma from 0.01 up left the audit at its floor (4.6% of content
# patches in place: the normaliser's mean-colour image), while sigma 0.001 cost 1.1 points for 9.1%. So the grid spans
# the accuracy end to privacy first with sigmas where accuracy and leak still move. C = 1.0 everywhere: where an
# example's gradient norm exceeds C, clipping scales the signal and the noise (sigma x C) alike, and AdamW's update
# does not change with that scale, so sigma alone sets the noise per signal. The run records its epsilon
# (`mjp_hf.training.defenses.dp_sgd_epsilon`).
DP_SIGMAS = {
    # The accuracy end: the least noise tried (noise on the batch mean sigma C / B ~ 1e-5); the clipping still acts,
    # so this is per-example clipping with a token of noise; epsilon ~1e9, no guarantee worth the name.
    "0.001": "accuracy end",
    # The least sigma at which the first look's audit reached its floor (4.6% in place, as at sigma 1.0); epsilon
    # ~1.3e7.
    "0.01": "leak floor",
    # Privacy first: epsilon below 1 (~0.88).
    "1.0": "privacy first",
}
# The combination's DP sigma: the one nearest in accuracy to MJP p 1 ratio 0.25 in the first look (84.47% and 84.4%
# at seed 0). The README checks the choice against the measured accuracies.
COMBINATION_SIGMA = "0.001"
# Local noise (Flower's LocalDpMod) at DP-SGD's two smaller sigmas, C 1: at the same sigma its noise lands on the
# clipped batch mean, B = 128 times DP-SGD's per signal, so sigma 0.01 here is near DP-SGD's privacy-first end and the
# first look's sigma 0.3 cost 40.7 points (44.9%); larger sigmas are not run.
LOCAL_SIGMAS = ("0.001", "0.01")
# Pruning: half of each gradient tensor zeroed (the accuracy end) and 90% (the privacy end; the ratio
# benchmarks/dp_step.py times).
PRUNE_RATIOS = ("0.5", "0.9")
# Defence variants are audited for privacy only (robustness and position are the MJP claims' questions), and the
# ones outside the combination question run on 2 seeds: the cuts that fit the default grid in 3 h (`COSTS`).
DEFENCE_EVALUATIONS = ("privacy",)


def _dp(sigma: str) -> tuple[str, ...]:
    return ("--jigsaw_prob", "0", "--dalr_head", "none", "--dp_noise_multiplier", sigma, "--dp_max_grad_norm", "1.0")


VARIANTS = {
    BASELINE: Variant("ViT (standard PE)", ("--jigsaw_prob", "0", "--dalr_head", "none"), family="vit"),
    # The release's ablation: every patch and the pixels inside each shuffled, on the same coin as MJP (p 0.5).
    "naive": Variant("naive shuffle (p 0.5, as released)", ("--jigsaw_mode", "naive"), family="naive"),
    "mjp": Variant("MJP as released (p 0.5, ratio 0.1)", ()),
    "mjp-p1-r0.1": Variant("MJP p 1, ratio 0.1", ("--jigsaw_prob", "1", "--jigsaw_ratio", "0.1")),
    "mjp-p1-r0.25": Variant("MJP p 1, ratio 0.25", ("--jigsaw_prob", "1", "--jigsaw_ratio", "0.25")),
    "mjp-p1-r0.5": Variant("MJP p 1, ratio 0.5", ("--jigsaw_prob", "1", "--jigsaw_ratio", "0.5")),
    # DP-SGD on the ViT: the combination's sigma on every seed (its paired comparisons need them), the others on 2.
    **{
        f"dp-s{sigma}": Variant(
            f"ViT + DP-SGD (sigma {sigma}, C 1)",
            _dp(sigma),
            family="dp_sgd",
            evaluations=DEFENCE_EVALUATIONS,
            max_seeds=None if sigma == COMBINATION_SIGMA else 2,
        )
        for sigma in DP_SIGMAS
    },
    # Local noise (`LOCAL_SIGMAS`): every step's batch gradient clipped to C, then N(0, (sigma C)^2) noise (Flower's
    # LocalDpMod); the model trained is the defended one.
    **{
        f"local-s{sigma}": Variant(
            f"ViT + local noise (sigma {sigma}, C 1)",
            (
                "--jigsaw_prob",
                "0",
                "--dalr_head",
                "none",
                "--local_noise_multiplier",
                sigma,
                "--local_max_grad_norm",
                "1.0",
            ),
            family="local_noise",
            evaluations=DEFENCE_EVALUATIONS,
            max_seeds=2,
        )
        for sigma in LOCAL_SIGMAS
    },
    **{
        f"prune-{ratio}": Variant(
            f"ViT + gradient pruning ({ratio})",
            ("--jigsaw_prob", "0", "--dalr_head", "none", "--prune_ratio", ratio),
            family="prune",
            evaluations=DEFENCE_EVALUATIONS,
            max_seeds=2,
        )
        for ratio in PRUNE_RATIOS
    },
    f"mjp-p1-r0.25-dp-s{COMBINATION_SIGMA}": Variant(
        f"MJP p 1, ratio 0.25 + DP-SGD (sigma {COMBINATION_SIGMA}, C 1)",
        (
            "--jigsaw_prob",
            "1",
            "--jigsaw_ratio",
            "0.25",
            "--dp_noise_multiplier",
            COMBINATION_SIGMA,
            "--dp_max_grad_norm",
            "1.0",
        ),
        family="mjp+dp_sgd",
        evaluations=DEFENCE_EVALUATIONS,
    ),
}
MJP_VARIANTS = [name for name, variant in VARIANTS.items() if variant.family == "mjp"]
COMBINATION = f"mjp-p1-r0.25-dp-s{COMBINATION_SIGMA}"
# The combination and its two halves: "is MJP + DP better than either alone".
COMBINATION_PARTS = ("mjp-p1-r0.25", f"dp-s{COMBINATION_SIGMA}")

# --- what the study costs ------------------------------------------------------------------------------------------

# The numbers the wall-time estimate assumes, per run at 1 thread with 2 runs side by side (`--parallel 2`), and
# where each comes from. Only the sum of a plain run's stages is measured; the split between them is estimated.
COSTS = {
    # Measured: the 2026-11-30 study (6 variants x 3 seeds) spent 9578 s of training and evaluation processes over
    # 18 runs (docs/study/results.json, `process_seconds`), 532 s a run, in 81 min of wall time at --parallel 2.
    "plain_run_seconds": 532.0,
    # Estimated: the main job's 2345 steps at 140.7 ms (1 thread, benchmarks/README.md "Step-level levers") ...
    "train_step_seconds": 330.0,
    # ... plus its start-up, data (7.4 ms a step) and five per-epoch evaluations ("What else the run spends"),
    # which a defence does not make dearer.
    "train_other_seconds": 50.0,
    # The rest of a plain run (152 s) split as the first look's plain runs (ViT and MJP p 1 r 0.25, 2026-12-02)
    # spent it: robustness 53 s, position 6 s, privacy 53 s a run (work_dir records; robustness' first run also
    # built the corruption cache).
    "robustness_seconds": 72.0,
    "position_seconds": 8.0,
    "privacy_seconds": 72.0,
}
# A training step's cost against a plain one, by defence.
STEP_COST_RATIO = {
    "none": 1.0,  # MJP's jigsaw and DALR cost < 2% of a step (benchmarks/README.md, train_step.py)
    # Measured in the one-seed first look (work_dir records of 2026-12-02, 1 thread, 2 runs side by side): training
    # seconds against the ViT's and MJP p 1 r 0.25's mean (240 s), less ~30 s of start-up and evaluation each.
    "dp_sgd": 1.8,  # per-example gradients through Opacus' hooks: 393-435 s (benchmarks/dp_step.py times the step)
    "local_noise": 1.1,  # one clip and one Gaussian draw a step: 260 s
    "prune": 1.05,  # a k-th value per gradient tensor a step: 231-269 s
}
STUDY_BUDGET_SECONDS = 3 * 3600  # the default grid must fit this at --parallel 2 on the 2-core machine
MACHINE_CORES = 2

# The lines the verdicts are drawn at (accuracy and error in percentage points, leak in points of content patches).
CLAIM_MARGINS = {
    # Claim 1: a standard-PE model leaks when more than half of the content patches come back in place per step.
    "leak": 50.0,
    # Claim 3: "keeps accuracy / robustness" = not worse by more than this (a non-inferiority margin) ...
    "accuracy": 1.0,
    "corruption_error": 1.0,
    # ... and "protects by a large margin" = at least this many points fewer content patches in place per step.
    "protection": 25.0,
    # "MJP + DP-SGD is better than either alone" = at least this many points fewer content patches in place per step
    # than each half (paired), and accuracy within the `accuracy` margin of each: 5 points is about the spread of the
    # 8-image audit (docs/PRIVACY.md: "differences of a few points between rows are within that noise").
    "combination": 5.0,
    # "A stated guarantee" = DP-SGD's epsilon at delta 1/N at most this: the single-digit range deployed DP training
    # reports; sigma 0.001's epsilon of ~1e9 is a number, not a guarantee.
    "epsilon": 10.0,
}

# (column title, record key, scale, decimals).
METRICS = [
    ("test acc. (%)", "eval_accuracy", 100, 1),
    ("DP-SGD epsilon (delta 1/N)", "dp_epsilon", 1, 2),
    ("mean corruption error (%)", "mean_corruption_error", 100, 1),
    ("jigsaw 0.9 acc. (%)", "jigsaw_accuracy", 100, 1),
    ("consistency agreement (%)", "consistency_agreement", 100, 1),
    ("leak per step: content patches in place (%)", "leak_per_step", 100, 1),
    ("leak per step: PSNR (dB)", "psnr_per_step", 1, 1),
    ("jigsawed step: patches in place (%)", "leak_jigsawed_step", 100, 1),
    ("exposure over 8 rounds (%)", "exposure_8_rounds", 100, 1),
    ("PE probe MAE 2-D (grid units)", "probe_mae_2d", 1, 2),
    ("DALR MAE (grid units)", "dalr_mae", 1, 4),
]
DIFFERENCES = [
    ("test acc. (points)", "eval_accuracy", 100, 2),
    ("mean corruption error (points)", "mean_corruption_error", 100, 2),
    ("leak per step (points)", "leak_per_step", 100, 1),
    ("exposure over 8 rounds (points)", "exposure_8_rounds", 100, 1),
]


def _whole(low: int, high: int | None = None):
    """argparse `type=` of a whole number in [low, high]: a value out of range is refused at parse time, naming the
    flag."""

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


_seed = _whole(0, 2**32 - 1)  # what NumPy and `transformers.set_seed` accept
_count = _whole(1)


def _severities(value: str) -> str:
    """`--severities`: a comma list of ImageNet-C severities (1-5), checked before any training."""
    parts = value.split(",")
    if not all(part.strip().isdigit() and int(part) in SEVERITIES for part in parts):
        raise argparse.ArgumentTypeError(f"{value!r} is invalid; pass a comma list of severities in 1-5, e.g. 1,3,5")
    return ",".join(str(int(part)) for part in parts)


def _seeds_for(value: str) -> tuple[str, list[int]]:
    """`--seeds_for VARIANT=0,1`: the variant and its seeds."""
    variant, _, listed = value.partition("=")
    try:
        return variant, [_seed(seed) for seed in listed.split(",")]
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(
            f"{value!r}: {error}; give whole-number seeds, e.g. '{variant}=0,1'"
        ) from None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", default=str(REPO / "docs" / "study"), help="Where tables, JSON and plots go.")
    parser.add_argument("--work_dir", default="/tmp/mjp_study", help="Trained models, raw outputs, the run cache.")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=_seed, default=[0, 1, 2])
    parser.add_argument(
        "--seeds_for",
        action="append",
        type=_seeds_for,
        default=[],
        metavar="VARIANT=SEEDS",
        help="Other seeds for one variant, e.g. 'mjp-p1-r0.5=0,1' (repeatable); the others use --seeds.",
    )
    parser.add_argument(
        "--max_steps",
        type=_count,
        default=None,
        help="Cut every training to this many steps (default: the demo "
        "preset's full schedule, the main job's budget). For smoke tests: the jigsaw then starts at step 0.",
    )
    parser.add_argument("--max_eval_samples", type=_count, default=None, help="Test images for the accuracy (all).")
    parser.add_argument("--robustness_samples", type=_count, default=1000, help="Test images for robustness.")
    parser.add_argument("--corruptions", default="common", help="Corruptions of the robustness evaluation.")
    parser.add_argument("--severities", type=_severities, default="1,2,3,4,5", help="Corruption severities.")
    parser.add_argument("--privacy_images", type=_count, default=8, help="Images attacked per run.")
    parser.add_argument("--privacy_args", default="", help="Extra flags for every privacy evaluation, as one string.")
    parser.add_argument("--train_args", default="", help="Extra flags for every training run, as one string.")
    parser.add_argument(
        "--parallel", type=_count, default=1, help="Runs (training, then evaluations) at once; one thread each if > 1."
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace the tables and plots in --output_dir.")
    parser.add_argument(
        "--estimate_only",
        action="store_true",
        help="Print the grid and its estimated wall time, then stop: nothing is trained, evaluated or written.",
    )
    args = parser.parse_args(argv)
    for variant in args.variants:  # a defence in --train_args beside a variant's own is refused before any work
        try:
            audit_flags([*VARIANTS[variant].flags, *args.train_args.split()])
        except ValueError as error:
            parser.error(f"--train_args {args.train_args!r} with variant {variant!r}: {error}")
    args.variant_seeds = variant_seeds(args.variants, args.seeds, args.seeds_for)
    return args


def variant_seeds(variants: list[str], seeds: list[int], overrides: list[tuple[str, list[int]]]) -> dict:
    """The seeds of each selected variant: its own from `--seeds_for VARIANT=0,1`, else `--seeds`, cut to the first
    `Variant.max_seeds` for the variants the default grid runs on fewer seeds."""
    chosen = {variant: list(seeds)[: VARIANTS[variant].max_seeds] for variant in variants}
    for variant, listed in overrides:
        if variant not in chosen:
            raise SystemExit(f"--seeds_for {variant}=...: {variant!r} is not among --variants {variants}.")
        chosen[variant] = listed
    return chosen


def job_order(variant_seeds: dict[str, list[int]]) -> list[tuple[str, int]]:
    """Seed by seed: a study stopped midway has every variant at (about) the same number of seeds."""
    seed_lists = list(variant_seeds.values())
    return [
        (variant, seeds[index])
        for index in range(max(map(len, seed_lists), default=0))
        for variant, seeds in variant_seeds.items()
        if index < len(seeds)
    ]


def defense_of(flags) -> Defense:
    """The gradient defence a training command line turns on (`Defense()`, kind "none", without one): its defence
    flags (`--flag value` or `--flag=value`) become the training's own `DefenseArguments`, so that the defaults and
    the refusals (two defences at once, a setting of a defence that is off) are the training's."""
    names = {field.name for field in dataclasses.fields(DefenseArguments)}
    flags = list(flags)
    given = {}
    for index, flag in enumerate(flags):
        name, equals, value = flag[2:].partition("=") if flag.startswith("--") else ("", "", "")
        if name not in names:
            continue
        if not equals:
            if index + 1 >= len(flags):
                raise ValueError(f"{flag} needs a value.")
            value = flags[index + 1]
        try:
            given[name] = {"dp_grad_sample_mode": str, "dp_noise_seed": int}.get(name, float)(value)
        except ValueError:
            raise ValueError(f"--{name} {value!r} is not a number.") from None
    return DefenseArguments(**given).defense()


def audit_flags(flags) -> list[str]:
    """The privacy audit's flags for the gradient a model trained with `flags` sends (the defended one): the one place
    a variant's defence becomes the audit's `--defense none|dp_sgd|local_noise|prune --noise_multiplier F
    --max_grad_norm F --prune_ratio F`. An undefended run passes none (the audit's default is no defence)."""
    defense = defense_of(flags)
    if defense.kind == "none":
        return []
    out = ["--defense", defense.kind]
    if defense.kind in ("dp_sgd", "local_noise"):
        out += ["--noise_multiplier", f"{defense.noise_multiplier:g}", "--max_grad_norm", f"{defense.max_grad_norm:g}"]
    if defense.kind == "prune":
        out += ["--prune_ratio", f"{defense.prune_ratio:g}"]
    return out


def run_seconds(variant: str, train_args: str = "", max_steps: int | None = None) -> dict:
    """The estimated seconds of one run of `variant` (`COSTS`, `STEP_COST_RATIO`): its training (the main job's steps
    times its defence's step cost, `max_steps` of them when given, plus the rest of a training) and each evaluation
    it gets."""
    kind = defense_of([*VARIANTS[variant].flags, *train_args.split()]).kind
    share = 1.0 if max_steps is None else min(1.0, max_steps / MAIN_JOB_STEPS)
    train = COSTS["train_other_seconds"] + COSTS["train_step_seconds"] * STEP_COST_RATIO[kind] * share
    return {"train": train, **{key: COSTS[f"{key}_seconds"] for key in VARIANTS[variant].evaluations}}


def estimate_wall_seconds(
    variant_seeds: dict[str, list[int]],
    parallel: int,
    train_args: str = "",
    max_steps: int | None = None,
    *,
    measured: dict[str, float] | None = None,
    finished: set | frozenset = frozenset(),
) -> dict:
    """The study's estimated wall time: its runs in the study's order (`job_order`), each run's training and then its
    evaluations in one worker, `parallel` workers (at most `MACHINE_CORES` run at full speed: more share the cores).
    By default the whole grid's cost from an empty --work_dir; what is left of it with the `finished` runs
    (`(variant, seed)`) left out and a variant's `measured` seconds a run (`measured_run_seconds`) in place of
    `COSTS`. `COSTS` are 1-thread figures: at `--parallel 1` a run takes both cores, so the estimate is an upper bound
    there."""
    per_run = {variant: sum(run_seconds(variant, train_args, max_steps).values()) for variant in variant_seeds}
    per_run.update({variant: seconds for variant, seconds in (measured or {}).items() if variant in per_run})
    variant_seeds = {
        variant: [s for s in seeds if (variant, s) not in finished] for variant, seeds in variant_seeds.items()
    }
    workers = [0.0] * min(parallel, MACHINE_CORES)
    for variant, _ in job_order(variant_seeds):
        index = workers.index(min(workers))
        workers[index] += per_run[variant]
    process = sum(per_run[variant] * len(seeds) for variant, seeds in variant_seeds.items())
    return {"wall_seconds": max(workers, default=0.0), "process_seconds": process, "per_run_seconds": per_run}


def finished_runs(work_dir: Path, variant_seeds: dict[str, list[int]]) -> dict[tuple[str, int], float]:
    """The runs of the grid the study has recorded as trained and evaluated in `work_dir` (every evaluation their
    variant gets), each with its seconds (training plus evaluations, summed over a resumed run's processes)."""
    out = {}
    for variant, seeds in variant_seeds.items():
        for seed in seeds:
            record = _read_record(work_dir, f"{variant}-seed{seed}")
            evaluations = record.get("eval_seconds", {})
            if "train_seconds" in record and all(key in evaluations for key in VARIANTS[variant].evaluations):
                out[(variant, seed)] = record["train_seconds"] + sum(
                    evaluations[key] for key in VARIANTS[variant].evaluations
                )
    return out


def measured_run_seconds(finished: dict[tuple[str, int], float]) -> dict[str, float]:
    """Per variant, the mean seconds of its finished runs (`finished_runs`)."""
    by_variant = {}
    for (variant, _), seconds in finished.items():
        by_variant.setdefault(variant, []).append(seconds)
    return {variant: sum(values) / len(values) for variant, values in by_variant.items()}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _env(threads: int | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_MININTERVAL": "10"}
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


def _record_path(work_dir: Path, name: str) -> Path:
    return work_dir / "records" / f"{name}.json"


def _read_record(work_dir: Path, name: str) -> dict:
    path = _record_path(work_dir, name)
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_record(work_dir: Path, name: str, record: dict) -> None:
    """Whole or not at all (a temporary file moved over the record): a study stopped mid-write keeps the old one."""
    path = _record_path(work_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


# --- the processes the study runs, and stopping them ------------------------------------------------------------


class Stopped(KeyboardInterrupt):
    """The study was told to stop (Ctrl-C: SIGINT, or SIGTERM); `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Children:
    """The training and evaluation processes of one study. Each runs in its own session, so that stopping the
    study stops it and its own children (data-loader workers) however the signal reached the study; once the study
    is stopped, no new one starts."""

    GRACE_SECONDS = 10  # between SIGTERM and SIGKILL

    def __init__(self):
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self.stopped_by: int | None = None

    def raise_if_stopped(self) -> None:
        """`Stopped` once the study is stopped: a run queued behind the stop neither starts nor says it does."""
        if self.stopped_by is not None:
            raise Stopped(self.stopped_by)

    def run(self, command: list[str], **kwargs) -> int:
        """Run `command` to its end and return its exit status; `Stopped` if the study is or gets stopped."""
        with self._lock:
            if self.stopped_by is not None:
                raise Stopped(self.stopped_by)
            process = subprocess.Popen(command, start_new_session=True, **kwargs)
            self._running.add(process)
        try:
            status = process.wait()
        finally:
            with self._lock:
                self._running.discard(process)
        if self.stopped_by is not None:
            raise Stopped(self.stopped_by)
        return status

    def stop(self, signum: int) -> int:
        """Stop every running process (SIGTERM to its session, SIGKILL after `GRACE_SECONDS`); start no new one.
        Returns how many were running."""
        with self._lock:
            self.stopped_by = signum
            running = list(self._running)
        for process in running:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + self.GRACE_SECONDS
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
        return len(running)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # gone already


def _raise_stopped(signum, frame):
    # Later signals are ignored: the first one is already stopping everything.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Stopped(signum)


@contextmanager
def stopping_on_signals():
    """Within the block, Ctrl-C (SIGINT) and SIGTERM raise `Stopped` in the main thread (where the study waits for
    its runs); the handlers are restored after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def only_study_in(work_dir: Path):
    """Refuse a second study on the same `--work_dir` (both would train the same runs into the same folders)."""
    lock_path = work_dir / ".mjp_study.lock"
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "?"
            raise SystemExit(
                f"mjp_study: another study is running in --work_dir {work_dir} (pid {owner}); wait for it to end, "
                "or pass another --work_dir."
            ) from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        for leftover in (work_dir / "records").glob(".*.tmp"):  # from a study killed while writing a record
            leftover.unlink()
        yield


def training_command(variant: str, seed: int, run_dir: Path, args) -> list[str]:
    command = [
        sys.executable,
        str(TRAIN_SCRIPT),
        "--preset",
        "demo",
        "--output_dir",
        str(run_dir),
        "--seed",
        str(seed),
        *VARIANTS[variant].flags,
    ]
    if args.max_eval_samples is not None:
        command += ["--max_eval_samples", str(args.max_eval_samples)]
    if args.max_steps is not None:
        # A budget shorter than the warmup epoch: the jigsaw must not wait for an epoch that never ends.
        command += ["--max_steps", str(args.max_steps), "--jigsaw_warmup_epochs", "0", "--save_strategy", "no"]
    if run_dir.is_dir() and not any(run_dir.glob("checkpoint-*")):
        # Killed before its first checkpoint: nothing to resume, and every file in it is the study's own run.
        command.append("--overwrite_output_dir")
    return command + args.train_args.split()


def _trained(work_dir: Path, name: str) -> bool:
    """Finished: the study recorded the training's success (`train_seconds` is written only after the process
    exits with status 0) and its files are there. A training stopped after writing some of them is not finished."""
    run_dir = work_dir / name
    return (
        "train_seconds" in _read_record(work_dir, name)
        and (run_dir / "all_results.json").is_file()
        and (run_dir / "model.safetensors").is_file()
    )


def train(variant: str, seed: int, work_dir: Path, args, children: Children) -> bool:
    """Train `(variant, seed)` unless it is trained; an unfinished run resumes from its last checkpoint (the
    training script does that on its own). Returns whether it did any work."""
    name = f"{variant}-seed{seed}"
    run_dir = work_dir / name
    if _trained(work_dir, name):
        return False
    command = training_command(variant, seed, run_dir, args)
    children.raise_if_stopped()
    log(f"{name}: training ({' '.join(command[2:])})")
    start = time.perf_counter()
    with open(work_dir / f"{name}.train.log", "a") as log_file:
        status = children.run(command, stdout=log_file, stderr=subprocess.STDOUT, env=_env(_threads(args)))
    if status != 0:
        raise RuntimeError(f"{name}: training failed (exit {status}); see {log_file.name}")
    record = _read_record(work_dir, name)
    # Seconds of this process only: a resumed run adds its earlier share.
    record["train_seconds"] = record.get("train_seconds", 0.0) + time.perf_counter() - start
    _write_record(work_dir, name, record)
    log(f"{name}: trained")
    return True


def _threads(args) -> int | None:
    # Runs side by side take one core each; alone, the adaptive thread count of the scripts decides.
    return 1 if args.parallel > 1 else None


def run_all(jobs: list[tuple[str, int]], work_dir: Path, args) -> tuple[dict, bool]:
    """Train and evaluate every `(variant, seed)`, `args.parallel` runs at a time: a run's evaluations start as soon
    as its training ends, beside the next training. Returns the evaluation reports by job, and whether any work was
    done (nothing is when every run is cached).

    Stopped (`Stopped`, from Ctrl-C or SIGTERM): the running processes are stopped, no run starts after them, and
    `Stopped` is raised once every worker has returned. A run that fails lets the running ones finish and starts
    no other before its error is raised."""
    children = Children()

    def run_one(job):
        variant, seed = job
        name = f"{variant}-seed{seed}"
        trained = train(variant, seed, work_dir, args, children)
        reports, evaluated = evaluate(variant, seed, work_dir / name, work_dir / "eval" / name, args, children)
        return reports, trained or evaluated

    pool = ThreadPoolExecutor(max_workers=args.parallel)
    try:
        futures = {job: pool.submit(run_one, job) for job in jobs}
        outcomes = {job: future.result() for job, future in futures.items()}
    except Stopped as stop:
        cut_short = children.stop(stop.signum)
        pool.shutdown(wait=True, cancel_futures=True)
        stop.cut_short = cut_short
        raise
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return {job: reports for job, (reports, _) in outcomes.items()}, any(work for _, work in outcomes.values())


def evaluation_jobs(variant: str, model_dir: Path, eval_dir: Path, seed: int, args) -> dict:
    """The evaluations `variant` gets (`Variant.evaluations`), each `(module, flags)`; the privacy audit attacks the
    gradient the run's defence sends (`audit_flags`)."""
    common = ["--model_name_or_path", str(model_dir), "--seed", str(seed), "--device", "cpu"]
    jobs = {
        "position": ("position", [*common, "--output_dir", str(eval_dir / "position")]),
        "robustness": (
            "robustness",
            [
                *common,
                "--output_dir",
                str(eval_dir / "robustness"),
                "--max_eval_samples",
                str(args.robustness_samples),
                "--corruptions",
                args.corruptions,
                "--severities",
                args.severities,
                "--corruption_cache",
                str(Path(args.work_dir) / "corruption_cache"),
            ],
        ),
        "privacy": (
            "privacy",
            [
                *common,
                "--output_dir",
                str(eval_dir / "privacy"),
                "--num_images",
                str(args.privacy_images),
                *PRIVACY_FLAGS,
                *args.privacy_args.split(),
                *audit_flags([*VARIANTS[variant].flags, *args.train_args.split()]),
            ],
        ),
    }
    return {key: jobs[key] for key in VARIANTS[variant].evaluations}


def evaluate(variant: str, seed: int, model_dir: Path, eval_dir: Path, args, children: Children) -> tuple[dict, bool]:
    """Run each evaluation's command line unless the study recorded it as finished; return the reports and whether
    any ran. Each runs in its own process, as a user would run it, so it loads the model with the code that is there
    now; one stopped midway runs again (`--overwrite`: its files are the study's own), and its log is appended to, so
    a failed attempt's log stays for the user. A privacy report that attacked another gradient than the run's defence
    sends (`audited_defense_matches`) is audited again when cached, and stops the study when just made."""
    work_dir = Path(args.work_dir)
    name = f"{variant}-seed{seed}"
    defense = defense_of([*VARIANTS[variant].flags, *args.train_args.split()])
    reports, worked = {}, False
    for key, (module, flags) in evaluation_jobs(variant, model_dir, eval_dir, seed, args).items():
        json_path = eval_dir / key / f"{module}.json"
        cached = json_path.is_file() and key in _read_record(work_dir, name).get("eval_seconds", {})
        if cached and key == "privacy" and not audited_defense_matches(json.loads(json_path.read_text()), defense):
            log(f"{name}: the cached privacy audit attacked another gradient than the run's defence sends")
            cached = False
        if not cached:
            children.raise_if_stopped()
            log(f"{name}: {key}")
            start = time.perf_counter()
            command = [sys.executable, "-m", f"mjp_hf.evaluation.{module}", *flags, "--overwrite"]
            with open(work_dir / f"{name}.{key}.log", "a") as log_file:
                status = children.run(
                    command, stdout=log_file, stderr=subprocess.STDOUT, env=_env(_threads(args)), cwd=REPO
                )
            if status != 0:
                raise RuntimeError(f"{name}: the {key} evaluation failed (exit {status}); see {log_file.name}")
            worked = True
            record = _read_record(work_dir, name)
            record.setdefault("eval_seconds", {})[key] = time.perf_counter() - start
            _write_record(work_dir, name, record)
        reports[key] = json.loads(json_path.read_text())
        if key == "privacy" and not audited_defense_matches(reports[key], defense):
            raise RuntimeError(
                f"{name}: the privacy audit recorded the defence {reports[key].get('defense')!r}, but the run trains "
                f"with {defense.to_dict()}: the audit must attack the defended gradient (mjp_hf.evaluation.privacy "
                f"{' '.join(audit_flags([*VARIANTS[variant].flags, *args.train_args.split()]))}); see {json_path}"
            )
    return reports, worked


def audited_defense_matches(report: dict, defense: Defense) -> bool:
    """Whether a privacy report attacked the gradient `defense` sends: the defence it records (`defense` in
    privacy.json: `name` and parameters) is `defense`; a report that records none (an audit from before `--defense`)
    attacked the undefended gradient."""
    recorded = report.get("defense")
    if not isinstance(recorded, dict):
        return defense.kind == "none"
    if recorded.get("name", recorded.get("kind")) != defense.kind:
        return False
    expected = {key: value for key, value in defense.to_dict().items() if key != "kind"}
    return all(
        isinstance(recorded.get(key), (int, float)) and math.isclose(recorded[key], value, rel_tol=1e-9)
        for key, value in expected.items()
    )


ARCHITECTURE_FIELDS = (
    "image_size",
    "patch_size",
    "num_channels",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
)


def architecture(run_dir: Path) -> dict:
    config = json.loads((run_dir / "config.json").read_text())
    return {field: config[field] for field in ARCHITECTURE_FIELDS}


def check_same_architecture(architectures: dict) -> dict:
    """All runs must share one shape: a preset edited between runs would make the comparison meaningless."""
    distinct = {json.dumps(shape, sort_keys=True) for shape in architectures.values()}
    if len(distinct) > 1:
        listing = "\n".join(f"  {name}: {shape}" for name, shape in architectures.items())
        raise RuntimeError(
            f"The runs do not share one architecture (the preset changed between them):\n{listing}\n"
            "Start again with an empty --work_dir."
        )
    return next(iter(architectures.values()))


# The privacy evaluation's flags: every attack on the model's own training steps (`auto`), the multi-round attacker
# at its default probabilities and the model's own; the optimisation attack on a budget that fits a grid of runs.
PRIVACY_FLAGS = ["--jigsaw", "auto", "--steps", "100", "--max_seconds", "15"]


def privacy_figures(report: dict) -> dict:
    """The leak figures of one privacy report, from the headline attack (the best per image): the expected leak per
    training step at the model's `jigsaw_prob`, on jigsawed steps alone, and the share after 8 rounds of the same
    image: the larger of the multi-round attacker's figure and the lower bound from the single-step figures (the only
    figure for models without the unknown PE, a stock ViT or the naive ablation, where the attacker cannot run)."""
    summary = report["summary"]
    headline = summary["headline"]
    jigsawed = summary["by_step"].get("jigsawed")
    exposure = summary["exposure"]["8"]
    # Recomputed rather than read: reports written before `single_step_bound` existed give the same figure.
    bound = exposure_lower_bound(summary["by_step"], exposure["plain_step_probability"])
    rounds = [
        figures["recovered_fraction_textured"]
        for figures in (exposure.get("multi_round_headline"), bound)
        if figures and figures.get("recovered_fraction_textured") is not None
    ]
    return {
        "leak_per_step": headline["recovered_fraction_textured"],
        "psnr_per_step": headline["psnr"],
        "leak_jigsawed_step": jigsawed["headline"]["recovered_fraction_textured"] if jigsawed else None,
        "exposure_8_rounds": max(rounds) if rounds else None,
    }


def collect_metrics(train_results: dict, reports: dict) -> dict:
    """The table's numbers for one run (`None` for an evaluation the variant does not get). `dp_epsilon` is the
    epsilon a DP-SGD run records in its all_results.json (docs/TRAINING.md), at its `dp_delta`."""
    robustness, position = reports.get("robustness"), reports.get("position")
    return {
        "eval_accuracy": train_results.get("eval_accuracy"),
        "dp_epsilon": train_results.get("dp_epsilon"),
        "mean_corruption_error": (robustness.get("corruption") or {}).get("mean_corruption_error")
        if robustness
        else None,
        "jigsaw_accuracy": robustness["jigsaw"]["accuracy"] if robustness else None,
        "consistency_agreement": robustness["consistency"]["agreement"] if robustness else None,
        **privacy_figures(reports["privacy"]),
        "probe_mae_1d": position["probe"]["mae_1d"] if position else None,
        "probe_mae_2d": position["probe"]["mae_2d"] if position else None,
        "probe_chance_mae_2d": position["probe"]["chance_mae_2d"] if position else None,
        "dalr_mae": (position["dalr"] or {}).get("mae") if position else None,
    }


def summarise(records: dict, variants: list[str]) -> dict:
    """Per variant and metric the mean and interval over seeds; per non-baseline variant the paired differences."""
    keys = {key for _, key, *_ in METRICS} | {key for _, key, *_ in DIFFERENCES}
    summary = {"variants": {}, "differences": {}}
    for variant in variants:
        runs = records[variant]
        summary["variants"][variant] = {
            key: (interval.as_dict() if (interval := Interval.of([run.get(key) for run in runs.values()])) else None)
            for key in sorted(keys)
        }
        if variant != BASELINE and BASELINE in records:
            summary["differences"][variant] = {}
            for _, key, *_ in DIFFERENCES:
                values = {seed: run.get(key) for seed, run in runs.items()}
                reference = {seed: run.get(key) for seed, run in records[BASELINE].items()}
                interval = paired_difference(values, reference)
                summary["differences"][variant][key] = interval.as_dict() if interval else None
    return summary


def _interval(entry: dict | None, scale: float = 1.0) -> Interval | None:
    return Interval(**entry).scaled(scale) if entry else None


def claims(summary: dict) -> list[dict]:
    """The three claims, each with its verdict and the intervals it rests on (in points / percent)."""
    variants, differences = summary["variants"], summary["differences"]
    margins = CLAIM_MARGINS
    out = []

    leak = _interval((variants.get(BASELINE) or {}).get("leak_per_step"), 100)
    out.append(
        {
            "claim": "1. Position embeddings leak the input under gradient inversion.",
            "verdict": verdict(
                [bool(leak) and leak.above(margins["leak"])], [bool(leak) and leak.below(margins["leak"])]
            )
            if leak
            else NOT_SHOWN,
            "evidence": f"ViT: {leak.format()}% of content patches in place per step (line: {margins['leak']:.0f}%)"
            if leak
            else "no baseline run",
        }
    )

    naive = differences.get("naive")
    if naive and naive["leak_per_step"] and naive["eval_accuracy"]:
        leak_diff, acc_diff = _interval(naive["leak_per_step"], 100), _interval(naive["eval_accuracy"], 100)
        out.append(
            {
                "claim": "2. Naive shuffling protects, but costs accuracy.",
                "verdict": verdict([leak_diff.below(0), acc_diff.below(0)], [leak_diff.above(0), acc_diff.above(0)]),
                "evidence": f"naive - ViT: leak {leak_diff.format()} points, accuracy {acc_diff.format(2)} points",
            }
        )
    else:
        out.append(
            {
                "claim": "2. Naive shuffling protects, but costs accuracy.",
                "verdict": NOT_SHOWN,
                "evidence": "needs the naive and baseline variants",
            }
        )

    settings = []
    for variant in (v for v in MJP_VARIANTS if v in differences):
        diff = differences[variant]
        if not (diff["eval_accuracy"] and diff["mean_corruption_error"] and diff["leak_per_step"]):
            continue
        acc = _interval(diff["eval_accuracy"], 100)
        error = _interval(diff["mean_corruption_error"], 100)
        leak_diff = _interval(diff["leak_per_step"], 100)
        settings.append(
            {
                "variant": variant,
                "verdict": verdict(
                    [
                        acc.above(-margins["accuracy"]),
                        error.below(margins["corruption_error"]),
                        leak_diff.below(-margins["protection"]),
                    ],
                    [
                        acc.below(-margins["accuracy"]),
                        error.above(margins["corruption_error"]),
                        leak_diff.above(-margins["protection"]),
                    ],
                ),
                "evidence": f"{variant} - ViT: accuracy {acc.format(2)}, corruption error {error.format(2)}, "
                f"leak per step {leak_diff.format()} points",
            }
        )
    verdicts = [setting["verdict"] for setting in settings]
    overall = HELD if HELD in verdicts else (NOT_HELD if verdicts and set(verdicts) == {NOT_HELD} else NOT_SHOWN)
    out.append(
        {
            "claim": "3. Under a certain shuffle ratio, MJP keeps accuracy and robustness and protects privacy by a large "
            f"margin (accuracy and corruption error within {margins['accuracy']:.0f} point of ViT, "
            f"at least {margins['protection']:.0f} points fewer content patches in place per step).",
            "verdict": overall,
            "evidence": "; ".join(f"{s['evidence']}: {s['verdict']}" for s in settings)
            or "needs MJP and baseline runs",
            "settings": settings,
        }
    )
    return out


def _cell(entry: dict | None, scale: float, decimals: int) -> str:
    interval = _interval(entry, scale)
    return interval.format(decimals) if interval else "-"


def _epsilon_text(interval: Interval) -> str:
    """Epsilon with 2 decimals, or in 3 significant digits where it is 10,000 or more (sigma 0.001 gives ~1e9)."""
    if interval.mean < 1e4:
        return interval.format(2)
    if not interval.resolved or interval.low == interval.high:
        return f"{interval.mean:.3g}"
    return f"{interval.mean:.3g} [{interval.low:.3g}, {interval.high:.3g}]"


def markdown_tables(summary: dict, records: dict, variants: list[str]) -> list[str]:
    lines = [
        "| model | seeds | " + " | ".join(title for title, *_ in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for variant in variants:
        cells = [
            _epsilon_text(_interval(summary["variants"][variant][key]))
            if key == "dp_epsilon" and summary["variants"][variant][key]
            else _cell(summary["variants"][variant][key], scale, decimals)
            for _, key, scale, decimals in METRICS
        ]
        lines.append(f"| {VARIANTS[variant].title} | {len(records[variant])} | " + " | ".join(cells) + " |")
    if summary["differences"]:
        lines += [
            "",
            "Paired differences against the ViT of the same seed (mean [95% interval]):",
            "",
            "| model | " + " | ".join(title for title, *_ in DIFFERENCES) + " |",
            "|---|" + "---|" * len(DIFFERENCES),
        ]
        for variant, diff in summary["differences"].items():
            cells = [_cell(diff[key], scale, decimals) for _, key, scale, decimals in DIFFERENCES]
            lines.append(f"| {VARIANTS[variant].title} | " + " | ".join(cells) + " |")
    return lines


def _seed_values(records: dict, variant: str, key: str) -> dict:
    return {seed: run.get(key) for seed, run in records[variant].items()}


def paired(records: dict, variant: str, reference: str, key: str, scale: float = 100) -> Interval | None:
    """The paired interval of `variant - reference` on `key` over the seeds both ran, in points (`scale`)."""
    interval = paired_difference(_seed_values(records, variant, key), _seed_values(records, reference, key))
    return interval.scaled(scale) if interval else None


def _mean(records: dict, variant: str, key: str) -> float | None:
    interval = Interval.of(list(_seed_values(records, variant, key).values()))
    return interval.mean if interval else None


def within_accuracy(records: dict, variants: list[str]) -> list[str]:
    """The variants shown within the accuracy margin of the ViT: their paired accuracy difference lies above
    -`CLAIM_MARGINS["accuracy"]` points (the ViT itself counts, at a difference of 0 on every seed)."""
    if BASELINE not in records:
        return []
    out = []
    for variant in variants:
        if variant == BASELINE:
            out.append(variant)
            continue
        difference = paired(records, variant, BASELINE, "eval_accuracy")
        if difference is not None and difference.above(-CLAIM_MARGINS["accuracy"]):
            out.append(variant)
    return out


LEAK_NEEDS = {
    "leak_per_step": "leaks least per step",
    "exposure_8_rounds": "leaks least over 8 rounds of the same image",
}


def least_leak_within_accuracy(records: dict, variants: list[str], key: str) -> dict:
    """Among the variants shown within the accuracy margin of the ViT (`within_accuracy`), the one that leaks least on
    `key`: the lowest mean, and the answer only when its paired interval against every other such variant lies below
    0 (it leaks less on the seeds both ran); otherwise not shown, naming the variants it is not separated from."""
    need = (
        f"Among the variants within {CLAIM_MARGINS['accuracy']:.0f} point of the ViT's accuracy (paired interval), "
        f"which {LEAK_NEEDS[key]}?"
    )
    candidates = [v for v in within_accuracy(records, variants) if _mean(records, v, key) is not None]
    if not candidates:
        return {"need": need, "key": key, "winner": None, "verdict": NOT_SHOWN, "evidence": "no variant qualifies"}
    if candidates == [BASELINE]:
        # The ViT is no defence: with no other variant shown within the margin, nothing answers the need.
        return {
            "need": need,
            "key": key,
            "winner": None,
            "verdict": NOT_SHOWN,
            "evidence": f"no defence is shown within the margin; {_by_means_within(records, variants, key)}",
        }
    ranked = sorted(candidates, key=lambda v: _mean(records, v, key))
    best = ranked[0]
    differences = {other: paired(records, best, other, key) for other in ranked[1:]}
    unseparated = [other for other, interval in differences.items() if not (interval and interval.below(0))]
    evidence = "; ".join(
        f"{best} - {other}: {interval.format() if interval else '-'} points" for other, interval in differences.items()
    )
    within = ", ".join(candidates)
    if unseparated:
        return {
            "need": need,
            "key": key,
            "winner": None,
            "verdict": NOT_SHOWN,
            "evidence": f"within: {within}; lowest mean {best}, not separated from {', '.join(unseparated)} "
            f"({evidence})",
        }
    return {
        "need": need,
        "key": key,
        "winner": best,
        "verdict": VARIANTS[best].title,
        "evidence": f"within: {within}; {evidence}"
        if evidence
        else f"within: {within} (no other variant is shown within the margin)",
    }


def _by_means_within(records: dict, variants: list[str], key: str) -> str:
    """The hint when the intervals answer nothing: among the variants within the accuracy margin by their mean paired
    difference alone, the one with the lowest mean on `key`."""
    close = []
    for variant in variants:
        difference = paired(records, variant, BASELINE, "eval_accuracy") if variant != BASELINE else None
        if (
            difference is not None
            and difference.mean >= -CLAIM_MARGINS["accuracy"]
            and _mean(records, variant, key) is not None
        ):
            close.append((variant, difference))
    if not close:
        return "none is within it by its mean either"
    variant, difference = min(close, key=lambda pair: _mean(records, pair[0], key))
    return (
        f"by means alone (not shown), {variant} leaks least of those within it: {100 * _mean(records, variant, key):.1f}% "
        f"for accuracy {difference.format(2)} points"
    )


def combination_verdict(records: dict) -> dict:
    """Is MJP + DP-SGD (`COMBINATION`) better than either half alone (`COMBINATION_PARTS`)? Better than a half: at
    least `CLAIM_MARGINS["combination"]` points less leak per step and accuracy within the accuracy margin (paired
    intervals); held when better than both, not held when the intervals show it is not better than one of them."""
    question = (
        f"Is {VARIANTS[COMBINATION].title} better than either alone (at least {CLAIM_MARGINS['combination']:.0f} "
        f"points less leak per step, accuracy within {CLAIM_MARGINS['accuracy']:.0f} point; paired)?"
    )
    missing = [v for v in (COMBINATION, *COMBINATION_PARTS) if v not in records]
    if missing:
        return {"question": question, "verdict": NOT_SHOWN, "evidence": f"needs {', '.join(missing)}", "parts": []}
    parts = []
    for part in COMBINATION_PARTS:
        accuracy = paired(records, COMBINATION, part, "eval_accuracy")
        leak = paired(records, COMBINATION, part, "leak_per_step")
        exposure = paired(records, COMBINATION, part, "exposure_8_rounds")
        if accuracy is None or leak is None:
            parts.append({"part": part, "verdict": NOT_SHOWN, "evidence": f"no seeds shared with {part}"})
            continue
        margin, accuracy_margin = CLAIM_MARGINS["combination"], CLAIM_MARGINS["accuracy"]
        parts.append(
            {
                "part": part,
                "verdict": verdict(
                    [leak.below(-margin), accuracy.above(-accuracy_margin)],
                    [leak.above(-margin), accuracy.below(-accuracy_margin)],
                ),
                "evidence": f"combination - {part}: accuracy {accuracy.format(2)}, leak per step {leak.format()}, "
                f"over 8 rounds {exposure.format() if exposure else '-'} points",
            }
        )
    verdicts = [part["verdict"] for part in parts]
    overall = HELD if set(verdicts) == {HELD} else (NOT_HELD if NOT_HELD in verdicts else NOT_SHOWN)
    return {
        "question": question,
        "verdict": overall,
        "evidence": "; ".join(f"{part['evidence']}: {part['verdict']}" for part in parts),
        "parts": parts,
    }


def defence_verdicts(records: dict, variants: list[str]) -> dict:
    """The answers to "MJP, DP-SGD, local noise, pruning, or both?", each from paired intervals."""
    return {
        "least_leak": [least_leak_within_accuracy(records, variants, key) for key in LEAK_NEEDS],
        "combination": combination_verdict(records),
    }


def _defence_kind(variant: str) -> str:
    return defense_of(VARIANTS[variant].flags).kind


def _cost(records: dict, variant: str) -> str:
    """What choosing `variant` costs: its accuracy against the ViT (paired), its training time, its epsilon."""
    parts = []
    if variant != BASELINE and BASELINE in records:
        accuracy = paired(records, variant, BASELINE, "eval_accuracy")
        if accuracy is not None:
            parts.append(f"accuracy {accuracy.format(2)} points against the ViT")
    parts.append(f"training {STEP_COST_RATIO[_defence_kind(variant)]:g}x the ViT's step cost")
    epsilon = Interval.of(list(_seed_values(records, variant, "dp_epsilon").values()))
    if epsilon is not None:
        parts.append(f"epsilon {_epsilon_text(epsilon)} at delta 1/N")
    return "; ".join(parts)


def _not_mjp(variant: str | None) -> str:
    return "" if variant is None or "mjp" in VARIANTS[variant].family else " MJP is not the answer for this need."


def recommendations(summary: dict, variants: list[str], records: dict | None = None) -> list[str]:
    """'Which setting for which need': the winner of each need with its cost (accuracy against the ViT, training
    time, epsilon), whichever variant it is, and where it is not MJP, that MJP is not the answer for that need. The
    first three needs rank by means; the two within the ViT's accuracy and the combination come from the intervals
    (`defence_verdicts`, with `records`)."""
    figures = {
        variant: {
            key: (summary["variants"][variant].get(key) or {}).get("mean")
            for key in ("eval_accuracy", "leak_per_step", "exposure_8_rounds")
        }
        for variant in variants
    }
    scored = {v: f for v, f in figures.items() if f["eval_accuracy"] is not None and f["leak_per_step"] is not None}
    if not scored:
        return []

    def describe(variant):
        f = figures[variant]
        exposure = (
            f" ({100 * f['exposure_8_rounds']:.1f}% over 8 rounds)" if f["exposure_8_rounds"] is not None else ""
        )
        cost = f"; cost: {_cost(records, variant)}" if records else ""
        return (
            f"{VARIANTS[variant].title}: {100 * f['eval_accuracy']:.1f}% test accuracy, "
            f"{100 * f['leak_per_step']:.1f}% of content patches in place per step{exposure}{cost}"
        )

    most_accurate = max(scored, key=lambda v: scored[v]["eval_accuracy"])
    least_leaky = min(scored, key=lambda v: scored[v]["leak_per_step"])
    lines = [
        f"- Accuracy first (by means): {describe(most_accurate)}.{_not_mjp(most_accurate)}",
        f"- Privacy first (by means): {describe(least_leaky)}.{_not_mjp(least_leaky)}",
    ]
    exposed = {v: f for v, f in scored.items() if f["exposure_8_rounds"] is not None}
    if exposed:
        least_exposed = min(exposed, key=lambda v: exposed[v]["exposure_8_rounds"])
        lines.append(
            f"- A client that sends the same image in many rounds (by means): {describe(least_exposed)}."
            f"{_not_mjp(least_exposed)}"
        )
    if records:
        answers = defence_verdicts(records, variants)
        for answer in answers["least_leak"]:
            need = (
                f"The least leak {'per step' if answer['key'] == 'leak_per_step' else 'over 8 rounds'} within "
                f"{CLAIM_MARGINS['accuracy']:.0f} point of the ViT's accuracy (intervals)"
            )
            if answer["winner"] is None:
                lines.append(f"- {need}: {NOT_SHOWN} ({answer['evidence']}).")
            else:
                lines.append(f"- {need}: {describe(answer['winner'])}.{_not_mjp(answer['winner'])}")
        dp = [v for v in scored if _mean(records, v, "dp_epsilon") is not None]
        bound = CLAIM_MARGINS["epsilon"]
        guaranteed = [v for v in dp if _mean(records, v, "dp_epsilon") <= bound]
        need = (
            f"- A stated guarantee (epsilon at most {bound:g} at delta 1/N; only DP-SGD gives one), the most accurate"
        )
        if guaranteed:
            best = max(guaranteed, key=lambda v: scored[v]["eval_accuracy"])
            lines.append(f"{need} (by means): {describe(best)}.{_not_mjp(best)}")
        elif dp:
            lines.append(f"{need}: no DP-SGD setting of this grid reaches it.")
        combination = answers["combination"]
        if combination["parts"]:
            lines.append(f"- MJP and DP-SGD together: {combination['verdict']} ({combination['evidence']}).")
    pareto = [
        v
        for v in scored
        if not any(
            scored[o]["eval_accuracy"] >= scored[v]["eval_accuracy"]
            and scored[o]["leak_per_step"] <= scored[v]["leak_per_step"]
            and o != v
            and (scored[o]["eval_accuracy"], scored[o]["leak_per_step"])
            != (scored[v]["eval_accuracy"], scored[v]["leak_per_step"])
            for o in scored
        )
    ]
    lines.append(
        "- Not beaten on both accuracy and leak by another setting (the Pareto front, by means): "
        + ", ".join(VARIANTS[v].title for v in sorted(pareto, key=lambda v: -scored[v]["eval_accuracy"]))
        + "."
    )
    return lines


def verdict_table(answers: dict) -> list[str]:
    """The markdown table of `defence_verdicts`."""
    lines = ["| question | answer | evidence (paired differences, points) |", "|---|---|---|"]
    for answer in answers["least_leak"]:
        lines.append(f"| {answer['need']} | **{answer['verdict']}** | {answer['evidence']} |")
    combination = answers["combination"]
    lines.append(f"| {combination['question']} | **{combination['verdict']}** | {combination['evidence']} |")
    return lines


PARETO_PANELS = [
    ("leak_per_step", "leak per step: content patches in place (%)"),
    ("exposure_8_rounds", "exposure over 8 rounds: content patches in place (%)"),
]
FAMILY_MARKERS = {"vit": "s", "naive": "X", "mjp": "o", "dp_sgd": "D", "local_noise": "^", "prune": "v"}


def plot_pareto(summary: dict, variants: list[str], path: Path) -> dict[str, list[str]]:
    """Test accuracy against the leak per step and against the exposure over 8 rounds, one point per variant (marker
    by defence) with its 95% interval bars. Returns the variants drawn in each panel, by the panel's key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), sharey=True)
    colours = plt.get_cmap("tab20").colors
    drawn = {}
    for ax, (key, label) in zip(axes, PARETO_PANELS):
        drawn[key] = []
        for index, variant in enumerate(variants):
            x = _interval(summary["variants"][variant].get(key), 100)
            y = _interval(summary["variants"][variant].get("eval_accuracy"), 100)
            if x is None or y is None:
                continue
            xerr = [[x.mean - x.low], [x.high - x.mean]] if x.resolved else None
            yerr = [[y.mean - y.low], [y.high - y.mean]] if y.resolved else None
            ax.errorbar(
                x.mean,
                y.mean,
                xerr=xerr,
                yerr=yerr,
                fmt=FAMILY_MARKERS.get(VARIANTS[variant].family, "P"),
                color=colours[index % len(colours)],
                capsize=3,
                label=VARIANTS[variant].title,
            )
            drawn[key].append(variant)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7)
    fig.suptitle(
        "Accuracy against privacy leak (mean and 95% interval over seeds): left leaks less, up is more accurate",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.05 + 0.03 * ((len(variants) + 2) // 3), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def grid_cuts(variant_seeds: dict[str, list[int]], seeds: list[int]) -> str:
    """The cuts that fit the default grid in `STUDY_BUDGET_SECONDS`, as this run made them: the README repeats them,
    naming the variants that ran on fewer of --seeds than the others (none when `--seeds_for` restored them)."""
    fewer = [variant for variant, ran in variant_seeds.items() if len(ran) < len(seeds)]
    text = (
        "The defence variants (DP-SGD, local noise, pruning, MJP + DP-SGD) are audited for privacy only: no "
        "robustness or position evaluation. Local noise runs at sigma "
        f"{' and '.join(LOCAL_SIGMAS)} only: at DP-SGD's sigma its noise per signal is the batch size (128) times "
        "DP-SGD's. "
    )
    cut_by_default = [variant for variant in variant_seeds if VARIANTS[variant].max_seeds is not None]
    if not fewer:
        restored = f" (`--seeds_for` restored {', '.join(cut_by_default)})" if cut_by_default else ""
        return text + f"Every variant ran on all of --seeds{restored}."
    return text + (
        f"{', '.join(fewer)} ran on fewer seeds than --seeds (the default grid's cut; `--seeds_for VARIANT=0,1,2` "
        "restores one); DP-SGD at the combination's sigma, the combination and the MJP and ViT variants run on all of "
        "--seeds, since the verdicts pair them. What a 2-seed cut costs: for the same spread s between seeds, a 95% "
        "interval over 2 seeds is +-9.0 s (Student-t 12.7 s / sqrt 2) against +-2.5 s over 3 (4.3 s / sqrt 3), so "
        "those variants' verdicts come out 'not shown' more often."
    )


def grid_table(variant_seeds: dict[str, list[int]], parallel: int, train_args: str, max_steps: int | None) -> list:
    """The grid with each run's estimated cost, and the estimated wall time of the whole grid."""
    estimate = estimate_wall_seconds(variant_seeds, parallel, train_args, max_steps)
    lines = [
        "| variant | seeds | evaluations | training step cost (x ViT) | estimated minutes a run |",
        "|---|---|---|---|---|",
    ]
    for variant, seeds in variant_seeds.items():
        kind = defense_of([*VARIANTS[variant].flags, *train_args.split()]).kind
        lines.append(
            f"| {VARIANTS[variant].title} | {', '.join(map(str, seeds))} | {', '.join(VARIANTS[variant].evaluations)} "
            f"| {STEP_COST_RATIO[kind]:g} | {estimate['per_run_seconds'][variant] / 60:.1f} |"
        )
    lines += [
        "",
        f"Estimated from an empty --work_dir at --parallel {parallel}: {estimate['wall_seconds'] / 3600:.2f} h of wall "
        f"time ({estimate['process_seconds'] / 3600:.2f} h of processes), from `COSTS` and `STEP_COST_RATIO` in "
        "examples/mjp_study.py (measured and assumed figures, each with its source there).",
    ]
    return lines


def combination_sigma_check(records: dict, variants: list[str]) -> str | None:
    """Whether the combination's DP-SGD sigma, chosen before the runs, is the DP-SGD setting nearest in accuracy to
    its MJP half, by the measured means."""
    mjp_half, chosen = COMBINATION_PARTS
    dp = [v for v in variants if VARIANTS[v].family == "dp_sgd" and _mean(records, v, "eval_accuracy") is not None]
    if COMBINATION not in records or mjp_half not in records or chosen not in dp:
        return None
    target = _mean(records, mjp_half, "eval_accuracy")
    if target is None:
        return None
    nearest = min(dp, key=lambda v: abs(_mean(records, v, "eval_accuracy") - target))
    outcome = (
        "as chosen"
        if nearest == chosen
        else f"not {VARIANTS[chosen].title}: the combination question then compares halves of unequal accuracy"
    )
    return (
        f"The combination's sigma ({COMBINATION_SIGMA}) was chosen before the runs as the DP-SGD setting nearest in "
        f"accuracy to {VARIANTS[mjp_half].title}; measured (by means) the nearest is {VARIANTS[nearest].title}, "
        f"{outcome}."
    )


def _chance_probe_error(records: dict) -> str:
    values = [run.get("probe_chance_mae_2d") for runs in records.values() for run in runs.values()]
    return next((f"{value:.2f}" for value in values if value is not None), "-")


def seed_listing(variant_seeds: dict[str, list[int]]) -> str:
    distinct = {tuple(seeds) for seeds in variant_seeds.values()}
    if len(distinct) == 1:
        return ", ".join(map(str, next(iter(distinct))))
    return "; ".join(f"{variant} {', '.join(map(str, seeds))}" for variant, seeds in variant_seeds.items())


def write_outputs(records: dict, variants: list[str], args, command: str, seconds: dict, shape: dict) -> None:
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(records, variants)
    verdicts = claims(summary)
    answers = defence_verdicts(records, variants)
    estimate = estimate_wall_seconds(args.variant_seeds, args.parallel, args.train_args, args.max_steps)
    settings = {key: value for key, value in vars(args).items() if key not in ("output_dir", "work_dir", "overwrite")}
    (output_dir / "results.json").write_text(
        json.dumps(
            {
                "command": command,
                "settings": settings,
                "architecture": shape,
                "wall_seconds": round(seconds["wall"]),
                "process_seconds": round(seconds["process"]),
                "margins": CLAIM_MARGINS,
                "claims": verdicts,
                "defence_verdicts": answers,
                "estimated_wall_seconds": round(estimate["wall_seconds"]),
                "summary": summary,
                "runs": records,
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
    plot_pareto(summary, variants, output_dir / "pareto.png")
    sigma_check = combination_sigma_check(records, variants)
    budget = "the demo preset's full schedule (the main job)" if args.max_steps is None else f"{args.max_steps} steps"
    text = [
        "# Which MJP setting, or DP-SGD, local noise, pruning? The paper's claims at the main job's budget",
        "",
        f"Made by `{command}`: {seconds['wall'] / 60:.0f} minutes of wall time on the 2-core CPU, {args.parallel} "
        f"run(s) at a time ({seconds['process'] / 60:.0f} minutes of training and evaluation processes, summed over "
        f"the runs). Tables written {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC with "
        f"{software_versions()}.",
        "",
        f"Demo preset ({shape['image_size']}x{shape['image_size']} Fashion-MNIST images, patch {shape['patch_size']}, "
        f"width {shape['hidden_size']}, depth {shape['num_hidden_layers']}), trained for {budget}; seeds "
        f"{seed_listing(args.variant_seeds)}. Privacy: `mjp_hf.evaluation.privacy {' '.join(PRIVACY_FLAGS + args.privacy_args.split())}` on "
        f"{args.privacy_images} test images per run, and for a defence variant with the defence's flags "
        "(`--defense dp_sgd|local_noise|prune --noise_multiplier --max_grad_norm --prune_ratio`, from its training "
        f"flags): the attacked gradient is the defended one; robustness on {args.robustness_samples}. Each cell: mean "
        "[95% Student-t interval over seeds]; '-' where a variant does not get that evaluation. DP-SGD's epsilon is "
        "the one its run records (`dp_epsilon` in all_results.json, at delta 1/N).",
        "",
        *markdown_tables(summary, records, variants),
        "",
        "## The claims",
        "",
        "| claim | verdict | evidence |",
        "|---|---|---|",
        *(f"| {c['claim']} | **{c['verdict']}** | {c['evidence']} |" for c in verdicts),
        "",
        "## MJP, DP-SGD, local noise, pruning, or both?",
        "",
        *verdict_table(answers),
        "",
        *([sigma_check, ""] if sigma_check else []),
        "## Which setting for which need",
        "",
        *recommendations(summary, variants, records),
        "",
        "![accuracy against leak](pareto.png)",
        "",
        "Leak columns: the headline attack (the best of the privacy evaluation's attacks, per image) on one client's "
        "batch-1 training step; 'per step' weighs jigsawed and plain steps by the model's `jigsaw_prob`; 'exposure "
        "over 8 rounds' is the share after the same image is seen in 8 training steps: the multi-round attacker's, or "
        "at least the single-step figures' bound (P x plain step + (1 - P) x jigsawed step, P the chance that one of "
        "the 8 steps is plain) where that is larger or the attacker cannot run (no unknown PE: ViT, naive). A patch "
        "counts when its reconstruction at its own position reaches 20 dB. Corruption error: the unnormalised mean "
        "over the ImageNet-C corruptions and severities. PE probe: 5-fold linear probe from a PE row to its (row, "
        f"col), in patches (always guessing the mean position: {_chance_probe_error(records)}); DALR MAE: the "
        "DALR head's error on the PE table, in patches.",
        "",
        "Raw outputs: `per_seed/<variant>-seed<N>/<evaluation>/*.json`; images for the first seed.",
        "",
        "## The grid and its cost",
        "",
        *grid_table(args.variant_seeds, args.parallel, args.train_args, args.max_steps),
        "",
        f"Cuts (the default grid fits {STUDY_BUDGET_SECONDS / 3600:.0f} h at --parallel 2): "
        f"{grid_cuts(args.variant_seeds, args.seeds)}",
    ]
    (output_dir / "README.md").write_text("\n".join(text) + "\n")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.estimate_only:
        print("\n".join(grid_table(args.variant_seeds, args.parallel, args.train_args, args.max_steps)))
        return {}
    readme = Path(args.output_dir) / "README.md"
    if readme.exists() and not args.overwrite:
        raise FileExistsError(f"{readme} exists; pass --overwrite to replace the study's tables and plots.")
    # The command that makes the tables: --overwrite only lets it replace them.
    command = "python examples/mjp_study.py " + " ".join(
        flag for flag in (sys.argv[1:] if argv is None else argv) if flag != "--overwrite"
    )
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    with only_study_in(work_dir), stopping_on_signals():
        try:
            return _study(args, work_dir, command, readme)
        except Stopped as stop:
            name = signal.Signals(stop.signum).name
            print(
                f"mjp_study: stopped by {name}: {getattr(stop, 'cut_short', 0)} running process(es) stopped, no run "
                "started after them. Run the same command to continue (finished runs are cached).",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(128 + stop.signum) from None


def _study(args, work_dir: Path, command: str, readme: Path) -> dict:
    jobs = job_order(args.variant_seeds)
    estimate = estimate_wall_seconds(args.variant_seeds, args.parallel, args.train_args, args.max_steps)
    finished = finished_runs(work_dir, args.variant_seeds)
    left = estimate_wall_seconds(
        args.variant_seeds,
        args.parallel,
        args.train_args,
        args.max_steps,
        measured=measured_run_seconds(finished),
        finished=set(finished),
    )
    log(
        f"{len(jobs)} runs; estimated {estimate['wall_seconds'] / 3600:.2f} h of wall time from an empty --work_dir at "
        f"--parallel {args.parallel} ({estimate['process_seconds'] / 3600:.2f} h of processes; COSTS in "
        f"examples/mjp_study.py); {len(finished)} finished in --work_dir, {left['wall_seconds'] / 3600:.2f} h left "
        "(from the finished runs' own times where a variant has one)"
    )
    start = time.perf_counter()
    all_reports, worked = run_all(jobs, work_dir, args)
    # The wall time of every invocation that trained or evaluated something: with everything cached it stays put.
    wall = _read_record(work_dir, "_study")
    if worked:
        wall["wall_seconds"] = wall.get("wall_seconds", 0.0) + time.perf_counter() - start
        _write_record(work_dir, "_study", wall)

    per_seed = Path(args.output_dir) / "per_seed"
    records, architectures, seconds = {}, {}, {"process": 0.0, "wall": wall.get("wall_seconds", 0.0)}
    for variant, seed in jobs:
        name = f"{variant}-seed{seed}"
        run_dir = work_dir / name
        eval_dir = work_dir / "eval" / name
        architectures[name] = architecture(run_dir)
        train_results = json.loads((run_dir / "all_results.json").read_text())
        records.setdefault(variant, {})[seed] = collect_metrics(train_results, all_reports[(variant, seed)])
        timing = _read_record(work_dir, name)
        seconds["process"] += timing.get("train_seconds", 0.0) + sum(timing.get("eval_seconds", {}).values())
        first_seed = seed == args.variant_seeds[variant][0]
        for path in sorted(eval_dir.rglob("*")):
            if path.suffix == ".json" or (path.suffix == ".png" and first_seed):
                target = per_seed / name / path.relative_to(eval_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
        log(f"{name}: {json.dumps(records[variant][seed])}")
    shape = check_same_architecture(architectures)
    write_outputs(records, args.variants, args, command, seconds, shape)
    log(f"done: {readme}")
    return records


if __name__ == "__main__":
    main()
