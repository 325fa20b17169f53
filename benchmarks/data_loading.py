"""Data loading of the main job: a training batch (keyed crop and flip) and an evaluation batch of Fashion-MNIST
through `ImageClassificationTransform`, by the example's own path (`load_fashion_mnist`'s uint8 arrays, then
`without_image_decoding` and the transform) against PIL images of the same pixels (a `datasets` Image column, as a
user's data set has), interleaved. `--baseline REV` also times the data path of a git revision beside today's: that
revision's `load_fashion_mnist` (at 30448cb and before: PGM bytes) and its transform, on the same images, walking
the same batches. Every batch timed is checked afterwards: the same pixels and labels from every variant.

    python benchmarks/data_loading.py                      # batches of 128 (train) and 500 (eval), ~30 s
    python benchmarks/data_loading.py --baseline bdd6b9a   # the data path of that revision alongside
    python benchmarks/data_loading.py --quick              # smoke run, synthetic images, a few seconds
    python -m benchmarks.data_loading --quick              # the same, as a module

Needs the Debian package `dataset-fashion-mnist` except with `--quick`.
"""

import argparse
import gzip
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import ViTImageProcessorPil

from mjp_hf.data import FASHION_MNIST_DIR, fashion_mnist_available
from mjp_hf.data import fashion_mnist as today
from mjp_hf.data import transforms as today_transforms
from mjp_hf.utils import bounded


if not __package__:  # run as a file, `python benchmarks/data_loading.py`: see _package.py
    __package__ = __import__("_package").package()

from ._timing import (
    Clock,
    add_common_arguments,
    describe_machine,
    interval_verdict,
    load_average,
    markdown_table,
    median,
    module_at_revision,
    paired_ratio,
    paired_ratio_interval,
    setup,
    time_interleaved,
)


# Today's path may take at most this many times the baseline's time per batch (issue 22).
BASELINE_LIMIT = 1.1


def write_synthetic_idx(folder: Path, count: int) -> Path:
    """Fashion-MNIST-shaped random images and labels as the Debian package's IDX files, so that `--quick` runs every
    variant's own loader, as on the real files."""
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        for kind, magic, array in (
            ("images-idx3", 2051, rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)),
            ("labels-idx1", 2049, (np.arange(count) % 10).astype(np.uint8)),
        ):
            header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
            with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb") as file:
                file.write(header + array.tobytes())
    return folder


def pil_dataset(images: np.ndarray, labels: np.ndarray):
    """The images as a `datasets` Image column (PNG, decoded to PIL images on access)."""
    from datasets import ClassLabel, Dataset, Features, Image

    features = Features({"image": Image(), "label": ClassLabel(num_classes=10)})
    return Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)


def batch_starts(count: int, batch_size: int, calls: int) -> list[int]:
    """The first index of each batch a variant fetches: consecutive batches, wrapping around."""
    return [(call * batch_size) % (count - batch_size + 1) for call in range(calls)]


def next_batches(dataset, starts: list[int], batch_size: int):
    """A call that fetches the dataset's next batch: every variant walks the same `starts`."""
    state = {"call": 0}

    def call():
        start = starts[state["call"] % len(starts)]
        state["call"] += 1
        return dataset[start : start + batch_size]

    return call


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--rounds", type=bounded(int, minimum=1), default=40, help="timed rounds (default 40)")
    parser.add_argument("--baseline", default=None, help="git revision whose data path is timed alongside")
    args = parser.parse_args(argv)
    baseline = None
    if args.baseline:
        baseline = (
            module_at_revision("mjp_hf/data/fashion_mnist.py", args.baseline, former_paths=("mjp_hf/data.py",)),
            module_at_revision("mjp_hf/data/transforms.py", args.baseline, former_paths=("mjp_hf/transforms.py",)),
        )
    device = setup(args)
    clock = Clock(device, args.clock)
    train_batch, eval_batch, rounds = (32, 64, 3) if args.quick else (128, 500, args.rounds)
    warmup = 1
    with tempfile.TemporaryDirectory() as scratch:
        if args.quick:
            data_dir = write_synthetic_idx(Path(scratch), 256)
        elif fashion_mnist_available():
            data_dir = FASHION_MNIST_DIR
        else:
            raise SystemExit("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist, or pass --quick.")
        datasets = {"today": today.load_fashion_mnist(data_dir)}
        if baseline is not None:
            datasets["baseline"] = baseline[0].load_fashion_mnist(data_dir)
        arrays = {split: today.load_fashion_mnist_arrays(split, data_dir) for split in ("train", "test")}

    processor = ViTImageProcessorPil(size={"height": 28, "width": 28})
    print("# data_loading: ms per batch through ImageClassificationTransform, today's path vs PIL images")
    print("\n".join(describe_machine(device, clock)))
    print()
    rows, ratios, slowdowns, all_same = [], {}, {}, True
    for split, batch_size, train_mode in (("train", train_batch, True), ("test", eval_batch, False)):
        images, labels = arrays[split]
        starts = batch_starts(len(images), batch_size, warmup + rounds)
        used = max(starts) + batch_size  # the PIL variant holds only the images the walk reaches
        options = dict(num_channels=3, train=train_mode, crop_scale=(1.0, 1.0), index_column="sample_index")
        variants = {
            "PIL images": today.with_sample_index(pil_dataset(images[:used], labels[:used])).with_transform(
                today_transforms.ImageClassificationTransform(processor, **options)
            ),
            "today": today.with_sample_index(today.without_image_decoding(datasets["today"][split])).with_transform(
                today_transforms.ImageClassificationTransform(processor, **options)
            ),
        }
        if baseline is not None:
            old_data, old_transforms = baseline
            variants["baseline"] = old_data.with_sample_index(
                old_data.without_image_decoding(datasets["baseline"][split])
            ).with_transform(old_transforms.ImageClassificationTransform(processor, **options))
        calls = {name: next_batches(dataset, starts, batch_size) for name, dataset in variants.items()}
        times = time_interleaved(calls, rounds=rounds, warmup=warmup, clock=clock)
        # Every batch the rounds fetched, fetched again: the same pixels and labels from each variant.
        same = True
        for start in sorted(set(starts)):
            batches = [dataset[start : start + batch_size] for dataset in variants.values()]
            same &= all(
                torch.equal(batch["pixel_values"], batches[0]["pixel_values"])
                and torch.equal(batch["labels"], batches[0]["labels"])
                for batch in batches
            )
        all_same &= same
        name = "train" if train_mode else "eval"
        ratios[name] = paired_ratio(times["PIL images"], times["today"])
        low, high = paired_ratio_interval(times["PIL images"], times["today"], seed=args.seed)
        row = [
            name,
            batch_size,
            rounds,
            f"{median(times['PIL images']) * 1e3:.2f}",
            f"{median(times['today']) * 1e3:.2f}",
            f"{ratios[name]:.2f} [{low:.2f}, {high:.2f}]",
        ]
        if baseline is not None:
            slowdowns[name] = (
                paired_ratio(times["today"], times["baseline"]),
                *paired_ratio_interval(times["today"], times["baseline"], seed=args.seed),
            )
            row += [f"{median(times['baseline']) * 1e3:.2f}", "{:.2f} [{:.2f}, {:.2f}]".format(*slowdowns[name])]
        rows.append(row + ["yes" if same else "NO"])
    headers = ["split", "batch", "rounds", "PIL images ms", "today ms", "speed-up over PIL [95%]"]
    if baseline is not None:
        headers += [f"at {args.baseline} ms", f"today / {args.baseline} [95%]"]
    print(markdown_table(headers + ["same pixels"], rows))
    print()
    print(f"load average at end: {load_average()}")
    summary = (
        f"data_loading: today's path {ratios['train']:.2f}x (train), {ratios['eval']:.2f}x (eval) faster than PIL"
    )
    if baseline is not None:
        worst_low = max(slowdown[1] for slowdown in slowdowns.values())
        worst_high = max(slowdown[2] for slowdown in slowdowns.values())
        verdict = interval_verdict(worst_low, worst_high, BASELINE_LIMIT, quick=args.quick)
        summary += (
            f"; the time of {args.baseline}'s: train {slowdowns['train'][0]:.2f}x, eval {slowdowns['eval'][0]:.2f}x "
            f"(at most {BASELINE_LIMIT}x: {verdict})"
        )
    summary += "; same pixels" if all_same else "; PIXELS DIFFER"
    print(summary + (" (quick run on synthetic images)" if args.quick else ""))
    if not all_same:
        raise SystemExit("data_loading: the variants gave different pixels or labels (see the table).")


if __name__ == "__main__":
    main()
