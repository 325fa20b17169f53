"""Two CPU processes (gloo), launched by torchrun and by `accelerate launch`, run the training example: each rank
draws its own jigsaw masks, the weights are saved once, the logged loss parts are reduced over ranks, evaluation
gathers both shards, and only rank 0 takes the output folder's lock (a second rank trying would be refused)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mjp_hf.training import LOCK_NAME, SAVE_IN_PROGRESS_NAME


ROOT = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent)
LAUNCHERS = {
    "torchrun": ["torchrun", "--nproc_per_node", "2"],
    # `--multi_gpu` is accelerate's name for its torch.distributed launcher; the example switches to CPU (gloo)
    # itself when there is no GPU.
    "accelerate": [
        "accelerate",
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ],
}
PORT_FLAG = {"torchrun": "--master_port", "accelerate": "--main_process_port"}

# Runs the example's `main` with a global forward hook that records, per rank, the masks the jigsaw drew.
WORKER = """
import json, os, sys
import torch
sys.path.insert(0, {examples!r})
import run_image_classification as run
from mjp_hf.modeling_mjp_vit import MJPViTModel

masks = []

def record(module, args, output):
    if isinstance(module, MJPViTModel) and module.training and output.jigsaw_mask is not None:
        masks.append(output.jigsaw_mask.flatten().tolist())

torch.nn.modules.module.register_module_forward_hook(record)
run.main(sys.argv[1:])
rank = int(os.environ["RANK"])
with open(os.path.join({record_dir!r}, f"masks_{{rank}}.json"), "w") as f:
    json.dump(masks, f)
"""


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_draw_their_own_masks_and_save_once(tmp_path, launcher):
    executable = shutil.which(LAUNCHERS[launcher][0], path=BIN)
    assert executable is not None, (
        f"{LAUNCHERS[launcher][0]} is missing beside {sys.executable}; reinstall the dev extras"
    )
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for index, name in enumerate(("a", "b")):
        (images / name).mkdir(parents=True)
        for i in range(16):
            pixels = rng.integers(0, 120, size=(28, 28, 3), dtype=np.uint8)
            pixels[..., index] += 120
            Image.fromarray(pixels).save(images / name / f"{i}.png")
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(examples=str(ROOT / "examples"), record_dir=str(tmp_path)))
    output = tmp_path / "run"
    port = str(29500 + os.getpid() % 1000 + (500 if launcher == "accelerate" else 0))
    command = [
        executable,
        *LAUNCHERS[launcher][1:],
        PORT_FLAG[launcher],
        port,
        str(worker),
        "--train_dir",
        str(images / "."),
        "--validation_dir",
        str(images),
        "--output_dir",
        str(output),
        "--config_overrides",
        "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64",
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "5",
        "--logging_steps",
        "1",
        "--jigsaw_warmup_epochs",
        "0",
        "--jigsaw_prob",
        "1",
        "--jigsaw_ratio",
        "0.4",
        "--eval_strategy",
        "no",
        "--save_steps",
        "2",
        "--disable_tqdm",
        "true",
        "--seed",
        "7",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    masks = [json.loads((tmp_path / f"masks_{rank}.json").read_text()) for rank in (0, 1)]
    assert len(masks[0]) == len(masks[1]) == 3 and all(sum(mask) > 0 for mask in masks[0] + masks[1])
    assert masks[0] != masks[1], "both ranks drew the same jigsaw masks: per-rank seeding (seed + rank) is broken"
    assert masks[0][0] != masks[1][0]

    # The checkpoint is complete only once every rank's RNG state is in it.
    checkpoint = sorted(path.name for path in (output / "checkpoint-2").iterdir())
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json", "run_arguments.json"} <= set(checkpoint)
    assert SAVE_IN_PROGRESS_NAME not in checkpoint

    saved = sorted(path.name for path in output.iterdir())
    assert LOCK_NAME not in saved, "the lock outlived the run"
    assert saved.count("model.safetensors") == 1 and "all_results.json" in saved and "README.md" in saved
    state = json.loads((output / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(logged) == 3
    for entry in logged:  # the parts are averaged over both ranks, like `loss`
        assert entry["classification_loss"] + entry["localization_loss"] == pytest.approx(entry["loss"], rel=1e-4)
    results = json.loads((output / "all_results.json").read_text())
    # 32 validation images, split over two ranks and gathered back: accuracies are multiples of 1/32.
    assert results["eval_samples_per_second"] > 0
    assert (results["eval_accuracy"] * 32) == pytest.approx(round(results["eval_accuracy"] * 32))
