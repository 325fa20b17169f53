import os


# Tests never reach the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


torch.set_num_threads(1)


def tiny_config_kwargs(**overrides):
    """A ViT small enough for CPU tests: 28x28 images, 4x4 patches (a 7x7 grid), 2 layers of width 32."""
    kwargs = dict(
        image_size=28,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
        layer_norm_eps=1e-6,
    )
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def tiny_kwargs():
    return tiny_config_kwargs()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Three classes of 12 small RGB images, distinguishable by colour."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index, name in enumerate(("cat", "dog", "owl")):
        (root / name).mkdir()
        for i in range(12):
            pixels = rng.integers(0, 80, size=(30, 26, 3), dtype=np.uint8)
            pixels[..., index] += 170
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def warm_python():
    """Real Python child processes without ~4 s of imports each: `warm_python.WarmPython` (one per test worker;
    MJP_TESTS_COLD_PYTHON=1 starts every child fresh instead)."""
    from warm_python import python_for_tests

    warm = python_for_tests()
    yield warm
    warm.close()
