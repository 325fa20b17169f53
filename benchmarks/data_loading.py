"""Data loading of the main job: a training batch (keyed crop and flip) and an evaluation batch of Fashion-MNIST
through `ImageClassificationTransform`, from PIL images (`datasets` decodes the column) against undecoded PGM bytes
(`without_image_decoding`, what the example uses), interleaved, same pixels checked. `--baseline REV` also times the
undecoded bytes through `mjp_hf/data/transforms.py` as it was at a git revision, its pixels checked too.

    python benchmarks/data_loading.py                      # batches of 128 (train) and 500 (eval), ~20 s
    python benchmarks/data_loading.py --baseline 3b6ae46   # with the transform of that revision alongside
    python benchmarks/data_loading.py --quick              # smoke run, synthetic images, a few seconds

Needs the Debian package `dataset-fashion-mnist` except with `--quick`.
"""

import argparse
import os
import sys

import numpy as np
import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import (  # noqa: E402
    Clock,
    add_common_arguments,
    describe_machine,
    load_average,
    markdown_table,
    median,
    module_at_revision,
    paired_ratio,
    paired_ratio_interval,
    setup,
    time_interleaved,
)
from transformers import ViTImageProcessorPil  # noqa: E402

from mjp_hf.data import (  # noqa: E402
    fashion_mnist_available,
    load_fashion_mnist,
    with_sample_index,
    without_image_decoding,
)
from mjp_hf.data.transforms import ImageClassificationTransform  # noqa: E402


def synthetic_dataset(n: int):
    """Fashion-MNIST-shaped random images in the loader's own PGM encoding (for `--quick` without the package)."""
    from datasets import ClassLabel, Dataset, Features, Image

    from mjp_hf.data.fashion_mnist import _encode_pgm

    images = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    features = Features({"image": Image(), "label": ClassLabel(num_classes=10)})
    encoded = [{"bytes": data, "path": None} for data in _encode_pgm(images)]
    return Dataset.from_dict({"image": encoded, "label": [i % 10 for i in range(n)]}, features=features)


def next_batches(dataset, batch_size: int):
    """A call that fetches the dataset's next batch (both variants walk the same sequence of batches)."""
    state = {"start": 0}

    def call():
        start = state["start"]
        state["start"] = (start + batch_size) % (len(dataset) - batch_size)
        return dataset[start : start + batch_size]

    return call


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--baseline", default=None, help="git revision whose transform is timed alongside")
    args = parser.parse_args(argv)
    baseline = (
        module_at_revision("mjp_hf/data/transforms.py", args.baseline, former_paths=("mjp_hf/transforms.py",))
        if args.baseline
        else None
    )
    device = setup(args)
    clock = Clock(device, args.clock)
    if args.quick or not fashion_mnist_available():
        if not args.quick:
            raise SystemExit("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist, or pass --quick.")
        train, test = synthetic_dataset(256), synthetic_dataset(256)
    else:
        dataset = load_fashion_mnist()
        train, test = dataset["train"], dataset["test"]
    train_batch, eval_batch, rounds = (32, 64, 3) if args.quick else (128, 500, args.rounds)

    processor = ViTImageProcessorPil(size={"height": 28, "width": 28})
    print("# data_loading: ms per batch through ImageClassificationTransform, PIL images vs undecoded PGM bytes")
    print("\n".join(describe_machine(device, clock)))
    print()
    rows, ratios, baseline_ratios = [], {}, {}
    for split, data, batch_size, train_mode in (
        ("train", train, train_batch, True),
        ("eval", test, eval_batch, False),
    ):
        options = dict(num_channels=3, train=train_mode, crop_scale=(1.0, 1.0), index_column="sample_index")
        transform = ImageClassificationTransform(processor, **options)
        variants = {
            "PIL images": with_sample_index(data).with_transform(transform),
            "undecoded bytes": with_sample_index(without_image_decoding(data)).with_transform(transform),
        }
        if baseline is not None:
            variants["baseline"] = with_sample_index(without_image_decoding(data)).with_transform(
                baseline.ImageClassificationTransform(processor, **options)
            )
        calls = {name: next_batches(dataset, batch_size) for name, dataset in variants.items()}
        times = time_interleaved(calls, rounds=rounds, warmup=1, clock=clock)
        first = {name: dataset[:batch_size]["pixel_values"] for name, dataset in variants.items()}
        same = all(torch.equal(first["PIL images"], pixels) for pixels in first.values())
        ratio = paired_ratio(times["PIL images"], times["undecoded bytes"])
        low, high = paired_ratio_interval(times["PIL images"], times["undecoded bytes"], seed=args.seed)
        ratios[split] = ratio
        row = [
            split,
            batch_size,
            rounds,
            f"{median(times['PIL images']) * 1e3:.2f}",
            f"{median(times['undecoded bytes']) * 1e3:.2f}",
            f"{ratio:.2f} [{low:.2f}, {high:.2f}]",
        ]
        if baseline is not None:
            baseline_ratios[split] = paired_ratio(times["baseline"], times["undecoded bytes"])
            low, high = paired_ratio_interval(times["baseline"], times["undecoded bytes"], seed=args.seed)
            row += [f"{median(times['baseline']) * 1e3:.2f}", f"{baseline_ratios[split]:.2f} [{low:.2f}, {high:.2f}]"]
        rows.append(row + ["yes" if same else "NO"])
    headers = ["split", "batch", "rounds", "PIL images ms", "undecoded bytes ms", "speed-up [95%]"]
    if baseline is not None:
        headers += [f"bytes at {args.baseline} ms", f"speed-up over {args.baseline} [95%]"]
    print(markdown_table(headers + ["same pixels"], rows))
    print()
    print(f"load average at end: {load_average()}")
    print(
        f"data_loading speed-up of undecoded bytes: train {ratios['train']:.2f}x, eval {ratios['eval']:.2f}x"
        + (
            f"; over {args.baseline}: train {baseline_ratios['train']:.2f}x, eval {baseline_ratios['eval']:.2f}x"
            if baseline is not None
            else ""
        )
        + (" (quick run on synthetic images)" if args.quick else "")
    )


if __name__ == "__main__":
    main()
