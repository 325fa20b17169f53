"""What a training run (`examples/run_image_classification.py`) writes beside its saved model, and what it tells the
user at the end: the arguments as JSON, the training curves, the model card of the folder as it is (its recipe, a
resume with changed flags, the gradient defence and, for DP-SGD, ε), and the closing report."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

from .callbacks import MJPScheduleCallback
from .defenses import Defense
from .run_folder import CARD_NAME, Resume
from .trainer import plot_training_curves


SCRIPT = "examples/run_image_classification.py"
# The TrainingArguments a run's card lists (with the world size and the jigsaw warm-up).
CARD_ARGUMENTS = (
    "learning_rate",
    "per_device_train_batch_size",
    "num_train_epochs",
    "max_steps",
    "weight_decay",
    "lr_scheduler_type",
    "warmup_steps",
    "max_grad_norm",
    "label_smoothing_factor",
    "seed",
)


def defense_text(defense: Defense, privacy: Mapping | None = None) -> str:
    """What the card says about a run's gradient defence: what was done at every step, and what it guarantees."""
    if defense.kind == "dp_sgd":
        privacy = privacy or {}
        done = (
            f"Gradient defence: DP-SGD through Opacus (σ {defense.noise_multiplier:g}, C {defense.max_grad_norm:g}): "
            "at every step each example's gradient was clipped to norm C and Gaussian noise of std σC added to their "
            f"sum, over Poisson-sampled batches (rate {privacy.get('dp_sample_rate', 0):.4g}, "
            f"{privacy.get('dp_steps')} steps)."
        )
        if privacy.get("dp_epsilon") is None:
            return done + " With noise multiplier 0 nothing hides an example's gradient: no privacy guarantee."
        return (
            f"{done} Opacus' RDP accountant gives ε = {privacy['dp_epsilon']:.4g} at δ = {privacy['dp_delta']:.3g}. "
            "The guarantee covers the trained weights, for the training examples. It does not cover what the run "
            "computed from the data without noise: the logged training losses, the evaluation results, and a "
            "checkpoint chosen on evaluation data (`--load_best_model_at_end`). The noise is as secret as its seed "
            "(`--dp_noise_seed`, else `--seed`)."
        )
    if defense.kind == "local_noise":
        return (
            f"Gradient defence: {defense.describe()}: at every optimizer step the gradient was clipped to global norm "
            "C and Gaussian noise of std σC added, as a federated client defends its update (Flower's `LocalDpMod`); "
            "these weights are the ones trained with the defended gradients. No ε is claimed: the noise of the steps "
            "is not accounted together."
        )
    if defense.kind == "prune":
        return (
            f"Gradient defence: {defense.describe()}: at every optimizer step only the largest-magnitude entries of "
            "each gradient tensor were applied; these weights are the ones trained with the pruned gradients. "
            "Pruning carries no formal privacy guarantee."
        )
    return ""


def _hyperparameters(trainer, resume: Resume | None, defense: Defense | None, privacy: Mapping | None) -> dict:
    args = trainer.args
    hyperparameters = {key: getattr(args, key) for key in CARD_ARGUMENTS}
    scheduler = hyperparameters["lr_scheduler_type"]
    hyperparameters["lr_scheduler_type"] = str(getattr(scheduler, "value", scheduler))
    hyperparameters["world_size"] = args.world_size
    hyperparameters["jigsaw_warmup_epochs"] = next(
        (
            callback.warmup_epochs
            for callback in trainer.callback_handler.callbacks
            if isinstance(callback, MJPScheduleCallback)
        ),
        None,
    )
    if defense is not None and defense.kind != "none":
        hyperparameters["defense"] = defense.describe()
        if privacy:
            epsilon = privacy["dp_epsilon"]
            hyperparameters["dp_epsilon"] = (
                f"{epsilon:.4g} at δ = {privacy['dp_delta']:.3g}"
                if epsilon is not None
                else "none: σ = 0, no guarantee"
            )
    if resume is not None and resume.changes:
        # The card states the recipe as it ran: the checkpoint's value up to the resume, then the new one.
        for name, old, new in resume.changes:
            hyperparameters[name] = f"{old} up to step {resume.step}, then {new}"
    return hyperparameters


def _training_text(resume: Resume | None, defense: Defense | None, privacy: Mapping | None) -> str | None:
    """The card's training paragraph; None (the card's own) for a plain run."""
    parts = []
    if resume is not None and resume.changes:
        parts.append(
            f"Trained with `mjp_hf` (`{SCRIPT}`), resumed at step {resume.step} with changed flags "
            f"({', '.join(name for name, _, _ in resume.changes)}; see the table). The optimizer and learning-rate "
            "scheduler states restored at the resume keep the checkpoint's learning rate and weight decay, so a "
            "change to those did not apply as given."
        )
    if defense is not None and defense.kind != "none":
        if not parts:
            parts.append(
                f"Trained with `mjp_hf` (`{SCRIPT}`); the hyper-parameters below are the ones the run recorded."
            )
        parts.append(defense_text(defense, privacy))
    return " ".join(parts) or None


def write_run_files(
    trainer,
    *,
    metrics: Mapping,
    dataset_name: str | None = None,
    eval_split: str | None = None,
    base_model: str | None = None,
    resume: Resume | None = None,
    defense: Defense | None = None,
):
    """The run folder's `training_args.json`, `training_curves.png` and model card (describing the folder as it
    is), beside the model the trainer saved (main process only). Returns the card of the publishing layout, for a
    push. A DP-SGD run's `metrics` hold its `privacy_record()` (ε, δ, ...), which the card states."""
    from ..hub import build_model_card

    args = trainer.args
    output_dir = Path(args.output_dir)
    (output_dir / "training_args.json").write_text(args.to_json_string(), encoding="utf-8")
    plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png", title=output_dir.name)
    privacy = metrics if defense is not None and defense.kind == "dp_sgd" else None
    if args.do_train:
        hyperparameters = _hyperparameters(trainer, resume, defense, privacy)
        training_text = _training_text(resume, defense, privacy)
    else:
        hyperparameters = None
        training_text = f"Not trained by this run: these are the weights of `{base_model}`, evaluated by `{SCRIPT}`."
    card_kwargs = dict(
        model_id=args.hub_model_id or output_dir.name,
        dataset_name=dataset_name,
        # A held-out share of the training split has no split name of its own.
        dataset_split=eval_split if eval_split in ("validation", "test") else None,
        metrics=metrics,
        hyperparameters=hyperparameters,
        base_model=base_model,
        training_text=training_text,
    )
    build_model_card(trainer.model, run_dir=args.output_dir, **card_kwargs).save(output_dir / CARD_NAME)
    return build_model_card(trainer.model, **card_kwargs)


def run_report(output_dir: str, metrics: Mapping, evaluated: bool, eval_split: str, eval_size: int) -> str:
    """What the user reads at the end of a run at any log level: where it went, its results, what to run next (the
    paths shell-quoted, so that the commands run as printed whatever the folder's name)."""
    folder = shlex.quote(str(output_dir))
    lines = [f"Saved the run to {folder}"]
    if "eval_accuracy" in metrics:
        scores = ", ".join(
            f"{name} {metrics[key]:.2%}"
            for key, name in (("eval_accuracy", "top-1"), ("eval_top5_accuracy", "top-5"))
            if key in metrics
        )
        lines.append(f"Evaluated on the {eval_split} split ({eval_size:,} images): {scores}")
    elif evaluated:
        lines.append(f"No accuracy from the {eval_split} split ({eval_size:,} images): no full evaluation batch.")
    else:
        lines.append("Not evaluated (--do_eval false).")
    if metrics.get("dp_epsilon") is not None:
        lines.append(f"DP-SGD: ε = {metrics['dp_epsilon']:.4g} at δ = {metrics['dp_delta']:.3g}")
    hub_dir = shlex.quote(f"{output_dir}-hub")
    lines += [
        "Next:",
        f"  python -m mjp_hf.hub layout --run_dir {folder} --output_dir {hub_dir} --model_id ORG/NAME"
        "   # the Hub layout, locally",
        f"  python -m mjp_hf.hub push --run_dir {folder} --hub_model_id ORG/NAME",
        *(
            f"  python -m mjp_hf.evaluation.{name} --model_name_or_path {folder} "
            f"--output_dir {shlex.quote(f'{output_dir}-{name}')}"
            for name in ("privacy", "robustness", "position")
        ),
    ]
    return "\n".join(lines)


__all__ = ["CARD_ARGUMENTS", "defense_text", "run_report", "write_run_files"]
