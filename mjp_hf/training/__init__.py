"""Training MJP-ViT with the transformers `Trainer`: the trainer (`trainer`), its callbacks (`callbacks`), checkpoints
(`checkpoints`), the output folder of a run (`run_folder`: one run at a time, resume or start afresh) and what it
writes there (`run_files`), the model a run starts from (`model_setup`), the named model shapes (`presets`), the
flags of a training command line (`arguments`, `defense_arguments`), the gradient defences (`defenses`, `dp_sgd`,
`defense_callback`) and the thread count adapted to the machine's load (`threads`, applied by command lines through
`command_line`).

The names are loaded on first use, so that `mjp_hf.training.presets` or `mjp_hf.training.threads` does not import
the `Trainer` (and accelerate) with them.
"""

import importlib


_NAMES = {
    "trainer": (
        "MJPTrainer",
        "NON_LOGIT_OUTPUTS",
        "TrainingDivergedError",
        "plot_training_curves",
        "preserved_rng_state",
        "soft_target_cross_entropy",
        "top_k_predictions",
    ),
    "callbacks": (
        "MJPScheduleCallback",
        "PerProcessSeedCallback",
        "TransformEpochCallback",
        "epoch_index",
        "mjp_schedule",
        "unwrap_model",
    ),
    "checkpoints": (
        "CheckpointCallback",
        "RUN_ARGUMENTS_NAME",
        "SAVE_IN_PROGRESS_NAME",
        "checkpoint_folders",
        "checkpoint_problem",
        "last_complete_checkpoint",
        "remove_checkpoint",
        "rotate_checkpoints",
    ),
    "run_folder": (
        "LOCK_NAME",
        "OutputFolderInUseError",
        "Resume",
        "RunLock",
        "check_output_location",
        "default_output_dir",
        "open_run_folder",
    ),
    "run_files": ("run_report", "write_run_files"),
    "model_setup": ("build_model", "load_image_processor", "model_config", "planned_mjp_settings", "run_kind"),
    "arguments": ("FLAG_RANGES", "TRAINING_ARGUMENTS", "check_flag_ranges", "given_flags"),
    "defense_arguments": ("DefenseArguments",),
    "dp_sgd": ("MJPDPSGDTrainer",),
    "threads": ("AdaptiveThreads", "AdaptiveThreadsCallback", "adaptive_threads", "user_thread_setting"),
    "command_line": ("run_command_line",),
    "presets": ("PRESETS", "config_from_preset"),
}
_MODULE_OF = {name: module for module, names in _NAMES.items() for name in names}


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)


def __dir__():
    return sorted([*globals(), *_MODULE_OF])


__all__ = sorted(_MODULE_OF)
