"""The package layout: modules that moved into subpackages stay importable (and runnable) at their old paths."""

import ast
import importlib
import json
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


def test_an_old_command_path_runs_the_new_command(warm_python):
    run = warm_python.run(["-m", "mjp_hf.convert_original", "--help"], capture_output=True, text=True, timeout=120)
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


def _imports_the_demo_data_set(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-2:] in (["data"], ["mjp_hf", "data"]):
            if any("fashion_mnist" in alias.name.lower() for alias in node.names):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if any(module.endswith("fashion_mnist") for module in modules):
                return True
    return False


def test_only_the_data_package_imports_the_demo_data_set():
    package = Path(mjp_hf.__file__).parent
    importers = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.parent.name != "data" and _imports_the_demo_data_set(path)
    ]
    assert importers == []


def test_the_widget_images_name_the_label_set_of_the_demo_data():
    from mjp_hf.data import FASHION_MNIST_LABELS
    from mjp_hf.hub.card import FASHION_MNIST_WIDGET_LABELS

    assert json.loads(FASHION_MNIST_WIDGET_LABELS.read_text(encoding="utf-8"))["labels"] == FASHION_MNIST_LABELS


def test_every_name_of_the_single_module_hub_still_imports_from_mjp_hf_hub():
    """`mjp_hf.hub` was one module before the split; each of its public names still imports from there (as the
    object its new module defines), and a name it never had is still missing."""
    import mjp_hf.hub
    from mjp_hf.hub import publish

    names = [name for name in vars(publish) if not name.startswith("_") and name not in {"annotations"}]
    assert {"default_widget", "widget_from_images", "layout_file_patterns", "main", "CARD_TEMPLATE"} <= set(names)
    for name in names:
        assert getattr(mjp_hf.hub, name) is getattr(publish, name), name
    with pytest.raises(AttributeError, match="no_such_name"):
        mjp_hf.hub.no_such_name  # noqa: B018
