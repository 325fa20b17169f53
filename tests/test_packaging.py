"""The wheel carries what the package reads at run time: the metric module and the model-card files."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_the_card_template_and_metric_module(tmp_path):
    # Built from a copy: setuptools builds in the source tree.
    source = tmp_path / "source"
    for folder in ("mjp_hf", "model_cards"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("mjp_hf-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    for name in (
        "mjp_hf/model_cards/mjp_model_card_template.md",
        "mjp_hf/model_cards/mjp-vit-small.md",
        "mjp_hf/evaluation/metrics/accuracy_topk/accuracy_topk.py",
        "mjp_hf/model_cards/widget/sneaker.png",
    ):
        assert name in names
    # Installed away from the checkout, the package finds its template and renders a card.
    script = (
        "import mjp_hf.hub.publish as hub, transformers\n"
        "assert hub.CARD_TEMPLATE.is_file() and 'site' in str(hub.CARD_TEMPLATE), hub.CARD_TEMPLATE\n"
        "from mjp_hf import MJPViTConfig, MJPViTForImageClassification\n"
        "config = MJPViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,\n"
        "                      image_size=32, patch_size=8, num_labels=2)\n"
        "card = hub.build_model_card(MJPViTForImageClassification(config), model_id='org/x')\n"
        "assert 'Masked Jigsaw Puzzle' in str(card)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]


def test_ci_tests_the_lowest_transformers_setup_py_declares():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from declared_range import install_requires, lowest_version
    finally:
        sys.path.pop(0)
    requirements = install_requires(ROOT / "setup.py")
    lowest = lowest_version(requirements, "transformers")
    assert any(requirement.startswith(f"transformers>={lowest},") for requirement in requirements)
    assert "declared_range.py transformers --lowest" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    with pytest.raises(SystemExit, match="declares no lower bound"):
        lowest_version(["transformers<6"], "transformers")
    with pytest.raises(SystemExit, match="does not declare"):
        lowest_version(["torch>=2.4"], "transformers")


def test_the_launchers_beside_the_interpreter_run_that_interpreter():
    """torchrun and accelerate (the distributed tests launch them) start the environment they sit in: CI's copy of
    the environment for the lowest transformers must not launch the original's python."""
    bin_dir = Path(sys.executable).parent
    for name in ("torchrun", "accelerate"):
        first_line = (bin_dir / name).read_text(encoding="utf-8").splitlines()[0]
        interpreter = Path(first_line.removeprefix("#!").split()[0])
        assert interpreter.parent == bin_dir, f"{bin_dir / name} starts {interpreter}, not an interpreter of {bin_dir}"
