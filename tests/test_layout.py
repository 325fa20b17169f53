"""The package layout: modules that moved into subpackages stay importable (and runnable) at their old paths."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import mjp_hf


@pytest.mark.parametrize("old, new", sorted(mjp_hf._MOVED_MODULES.items()))
def test_an_old_module_path_is_the_module_at_its_new_path(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        moved = importlib.import_module(old)
    assert moved is importlib.import_module(new)


def test_an_old_command_path_runs_the_new_command():
    run = subprocess.run(
        [sys.executable, "-m", "mjp_hf.convert_original", "--help"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage: python -m mjp_hf.conversion.original" in run.stdout


def test_a_module_that_never_existed_is_still_missing():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mjp_hf.no_such_module")


def test_model_code_alone_sits_at_the_top_of_the_package():
    # Remote code (`trust_remote_code=True`) copies the modeling file and what it imports relatively; everything else
    # lives in a subpackage by concern.
    top_level = sorted(path.name for path in Path(mjp_hf.__file__).parent.glob("*.py"))
    assert top_level == ["__init__.py", "configuration_mjp_vit.py", "jigsaw.py", "modeling_mjp_vit.py"]
