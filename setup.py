from pathlib import Path

from setuptools import find_packages, setup


EXTRAS = {
    "training": [
        "datasets>=4.0",
        "evaluate>=0.4.6",
        "accelerate>=1.0",
        "scikit-learn>=1.3",
        "pillow",
        "matplotlib",
        "tqdm",
    ],
    "evaluation": ["scikit-image>=0.22", "scikit-learn>=1.3", "imagecorruptions-imaug>=1.1.5", "matplotlib", "tqdm"],
}
# setuptools: tests/test_packaging.py builds the wheel. onnx: tests/test_modeling.py exports the model. opacus:
# tests/test_opacus.py trains the model with DP-SGD. ruff: the house style (ruff.toml), checked in CI.
EXTRAS["dev"] = sorted(
    {dep for deps in EXTRAS.values() for dep in deps}
    | {"pytest>=8", "pytest-xdist>=3", "setuptools>=64", "onnx>=1.16", "opacus>=1.5", "ruff>=0.6"}
)
EXTRAS["all"] = EXTRAS["dev"]

setup(
    name="mjp-hf",
    version="0.1.0",
    description="Masked Jigsaw Puzzle (MJP) position embeddings for Vision Transformers, native to transformers",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["mjp_hf", "mjp_hf.*"]) + ["mjp_hf.model_cards"],
    # The card template and the released model's card live at the repository root, in model_cards/; a wheel carries
    # them inside the package (mjp_hf/model_cards/), where `mjp_hf.hub` looks when there is no checkout around it.
    package_dir={"mjp_hf.model_cards": "model_cards"},
    package_data={
        "mjp_hf.evaluation": ["metrics/*/*.py", "metrics/*/*.md"],
        "mjp_hf.model_cards": ["*.md", "widget/*.png", "widget/labels.json"],
    },
    # CI (.ci/run) tests the newest transformers and the lowest declared here (scripts/declared_range.py).
    install_requires=["torch>=2.4", "transformers>=5.20,<6", "safetensors>=0.4", "huggingface-hub>=1.0", "numpy"],
    extras_require=EXTRAS,
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "License :: OSI Approved :: Apache Software License",
    ],
)
