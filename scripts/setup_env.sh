#!/usr/bin/env bash
# Set up mjp-hf on a fresh Debian/Ubuntu machine: the embedded default data (Debian's Fashion-MNIST package),
# a virtual environment in .venv, and the package with the extras named as arguments (default: training).
#   bash scripts/setup_env.sh            # to train: the main job
#   bash scripts/setup_env.sh dev        # to run the tests
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${*:-training}"
extras="${extras// /,}"

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  as_root=""
  if [ "$(id -u)" -ne 0 ]; then as_root="sudo"; fi
  $as_root apt-get install -y -q dataset-fashion-mnist >/dev/null \
    || { $as_root apt-get update -q >/dev/null && $as_root apt-get install -y -q dataset-fashion-mnist >/dev/null; }
fi

python3 -m venv .venv
# torch is pinned to the CPU-capable 2.13.0 release; an unpinned `pip install torch` may pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==${MJP_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extras}]"
