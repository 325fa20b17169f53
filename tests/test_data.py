"""The embedded default dataset loader (`mjp_hf.data`), the torchvision-free transforms (`mjp_hf.data.transforms`) and
Mixup/CutMix (`mjp_hf.data.mixup`), with the keyed augmentation randomness and geometry they draw on
(`mjp_hf.data.augmentation`)."""

import gzip

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessorPil

from mjp_hf.data import (
    FASHION_MNIST_LABELS,
    fashion_mnist_available,
    load_fashion_mnist,
    load_fashion_mnist_arrays,
    with_sample_index,
    without_image_decoding,
)
from mjp_hf.data.arrays import array_image_feature, array_image_items, read_array_image, read_array_images
from mjp_hf.data.augmentation import keyed_uniform, sample_erasing_boxes, sample_resized_crop_boxes
from mjp_hf.data.mixup import MixupCutmixCollator
from mjp_hf.data.transforms import (
    ImageClassificationTransform,
    collate_image_classification,
    open_image,
    processor_image_size,
)


def _write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion_mnist(tmp_path):
    """IDX files in the Debian package's layout, with known pixels and labels."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, prefix, n in (("train", "train", 12), ("test", "t10k", 5)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)
        arrays[split] = (images, labels)
    return tmp_path, arrays


def test_loader_keeps_the_uint8_arrays_and_class_labels(fake_fashion_mnist):
    folder, arrays = fake_fashion_mnist
    dataset = load_fashion_mnist(folder)
    assert set(dataset) == {"train", "test"}
    assert dataset["train"].features["label"].names == FASHION_MNIST_LABELS
    assert dataset["train"].features["image"] == array_image_feature()
    for split, (images, labels) in arrays.items():
        assert len(dataset[split]) == len(images)
        for index in (0, len(images) - 1):
            example = dataset[split][index]
            # The array's own bytes and shape: nothing encoded, nothing to parse.
            assert example["image"] == {"pixels": images[index].tobytes(), "shape": [28, 28]}
            np.testing.assert_array_equal(read_array_image(example["image"]), images[index])
            np.testing.assert_array_equal(np.asarray(open_image(example["image"])), images[index])
            assert example["label"] == labels[index]
        np.testing.assert_array_equal(read_array_images(dataset[split][:]["image"]), images)


def test_loader_errors_name_the_fix(tmp_path, fake_fashion_mnist):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "missing")
    folder, _ = fake_fashion_mnist
    with pytest.raises(ValueError, match="Unknown Fashion-MNIST split 'val'"):
        load_fashion_mnist_arrays("val", folder)
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(5), 2051)  # image magic in a label file
    with pytest.raises(ValueError, match="not an IDX file of the expected kind"):
        load_fashion_mnist_arrays("test", folder)


@pytest.mark.skipif(not fashion_mnist_available(), reason="needs the Debian package dataset-fashion-mnist")
def test_real_fashion_mnist_matches_the_idx_arrays():
    dataset = load_fashion_mnist()
    assert (len(dataset["train"]), len(dataset["test"])) == (60000, 10000)
    images, labels = load_fashion_mnist_arrays("test")
    np.testing.assert_array_equal(read_array_image(dataset["test"][1234]["image"]), images[1234])
    assert dataset["test"][1234]["label"] == labels[1234]
    assert np.bincount(labels).tolist() == [1000] * 10


def test_crop_boxes_follow_the_random_resized_crop_rule():
    sizes = np.array([[28, 28], [100, 20], [20, 100], [64, 48]] * 500)
    boxes = sample_resized_crop_boxes(sizes, scale=(0.3, 0.9), generator=torch.Generator().manual_seed(0))
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= sizes[:, 0]).all() and (boxes[:, 3] <= sizes[:, 1]).all()
    assert (width > 0).all() and (height > 0).all()
    # Crops that were sampled (not the fallback) respect the area and aspect ranges, up to rounding.
    square = (sizes == [28, 28]).all(1)
    fraction = width[square] * height[square] / 784
    assert fraction.min() > 0.3 - 0.06 and fraction.max() < 0.9 + 0.06
    aspect = width[square] / height[square]
    assert aspect.min() > 3 / 4 - 0.15 and aspect.max() < 4 / 3 + 0.2
    # Positions cover the image: the left edge varies.
    assert len(set(boxes[square, 0].tolist())) > 5


def test_crop_boxes_are_reproducible_and_full_scale_is_identity():
    sizes = np.array([[28, 28]] * 8)
    first = sample_resized_crop_boxes(sizes, generator=torch.Generator().manual_seed(3))
    second = sample_resized_crop_boxes(sizes, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(first, second)
    full = sample_resized_crop_boxes(sizes, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_array_equal(full, [[0, 0, 28, 28]] * 8)
    # An image too elongated for any attempt gets the centre crop clamped to the ratio range.
    fallback = sample_resized_crop_boxes(np.array([[200, 10]]), scale=(0.9, 1.0))
    np.testing.assert_array_equal(fallback, [[93, 0, 106, 10]])
    with pytest.raises(ValueError, match="crop scale"):
        sample_resized_crop_boxes(sizes, scale=(0.0, 1.0))


def _images(n=4, mode="L", size=(28, 28)):
    rng = np.random.default_rng(1)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    return [Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode) for _ in range(n)]


def test_eval_transform_is_the_image_processor_with_rgb_conversion():
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
    images = _images()
    transform = ImageClassificationTransform(processor, num_channels=3)
    out = transform({"image": images, "label": [0, 1, 2, 3]})
    expected = processor([image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
    assert out["pixel_values"].shape == (4, 3, 32, 32)
    torch.testing.assert_close(out["pixel_values"], expected)
    assert out["labels"].tolist() == [0, 1, 2, 3] and out["labels"].dtype == torch.long
    torch.testing.assert_close(transform({"image": images})["pixel_values"], out["pixel_values"])  # deterministic
    single = ImageClassificationTransform(processor, num_channels=1)({"image": _images(mode="RGB")})
    assert single["pixel_values"].shape == (4, 1, 32, 32)


@pytest.mark.parametrize("channels", [1, 3])
def test_eval_transform_at_the_processor_size_equals_the_processor(channels):
    """Images already at the processor's size skip it (a vectorised rescale and normalise) with the same result; a
    processor that also crops still runs itself."""
    from transformers import DeiTImageProcessorPil

    processor = ViTImageProcessorPil(
        size={"height": 28, "width": 28}, image_mean=[0.2, 0.4, 0.6], image_std=[0.3, 0.2, 0.1]
    )
    images = _images(n=6, mode="RGB")
    every_value = np.arange(256 * 3, dtype=np.uint8).reshape(16, 16, 3).repeat(2, 0).repeat(2, 1)[:28, :28]
    images[0] = Image.fromarray(np.ascontiguousarray(every_value))  # each of the 256 values in each channel
    mode = "RGB" if channels == 3 else "L"
    out = ImageClassificationTransform(processor, num_channels=channels)({"image": images})["pixel_values"]
    expected = processor(
        [image.convert(mode) for image in images],
        return_tensors="pt",
        image_mean=[0.2, 0.4, 0.6][:channels],
        image_std=[0.3, 0.2, 0.1][:channels],
    )["pixel_values"]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)  # the same float32 values, to the bit
    cropping = DeiTImageProcessorPil(size={"height": 28, "width": 28}, crop_size={"height": 20, "width": 20})
    cropped = ImageClassificationTransform(cropping)({"image": images})["pixel_values"]
    assert cropped.shape == (6, 3, 20, 20) and processor_image_size(cropping) == (20, 20)
    train = ImageClassificationTransform(cropping, train=True)({"image": images})["pixel_values"]
    assert train.shape == (6, 3, 20, 20)  # training crops to the size evaluation gives the model
    torch.testing.assert_close(cropped, cropping(images, return_tensors="pt")["pixel_values"])


def test_train_transform_without_crop_or_flip_matches_eval():
    processor = ViTImageProcessorPil(size={"height": 28, "width": 28})
    images = _images()
    train = ImageClassificationTransform(processor, train=True, crop_scale=(1.0, 1.0), horizontal_flip=False)
    evaluation = ImageClassificationTransform(processor)
    batch = {"image": images, "label": [0] * 4}
    torch.testing.assert_close(train(batch)["pixel_values"], evaluation(batch)["pixel_values"], atol=1e-6, rtol=0)


def test_train_transform_flips_and_crops_at_random():
    processor = ViTImageProcessorPil(size={"height": 28, "width": 28})
    images = _images(n=64)
    batch = {"image": images, "label": [0] * 64}
    reference = ImageClassificationTransform(processor)(batch)["pixel_values"]
    torch.manual_seed(0)
    flipped = ImageClassificationTransform(processor, train=True, crop_scale=(1.0, 1.0))(batch)["pixel_values"]
    same = torch.isclose(flipped, reference, atol=1e-6).flatten(1).all(1)
    mirrored = torch.isclose(flipped, reference.flip(-1), atol=1e-6).flatten(1).all(1)
    assert (same | mirrored).all() and 10 < int(mirrored.sum()) < 54
    torch.manual_seed(0)
    cropped = ImageClassificationTransform(processor, train=True, crop_scale=(0.2, 0.5))(batch)["pixel_values"]
    assert cropped.shape == (64, 3, 28, 28) and not torch.allclose(cropped, reference)
    torch.manual_seed(0)
    again = ImageClassificationTransform(processor, train=True, crop_scale=(0.2, 0.5))(batch)["pixel_values"]
    torch.testing.assert_close(cropped, again)  # seeded torch reproduces the augmentation


def test_keyed_uniform_depends_only_on_seed_epoch_and_index():
    values = keyed_uniform(0, 0, np.arange(20000), 23)
    assert values.shape == (20000, 23) and values.dtype == np.float64
    assert values.min() >= 0 and values.max() < 1
    assert abs(values.mean() - 0.5) < 0.005 and abs(values.var() - 1 / 12) < 0.002
    # Neighbouring indices and draws are uncorrelated.
    assert abs(np.corrcoef(values[:-1, 0], values[1:, 0])[0, 1]) < 0.03
    assert abs(np.corrcoef(values[:, 0], values[:, 1])[0, 1]) < 0.03
    # A row is a function of (seed, epoch, index) alone: not of the batch it is drawn in.
    np.testing.assert_array_equal(keyed_uniform(0, 0, [7, 3], 23), values[[7, 3]])
    assert not np.array_equal(keyed_uniform(0, 1, [7], 23), values[[7]])
    assert not np.array_equal(keyed_uniform(1, 0, [7], 23), values[[7]])


def test_keyed_augmentation_follows_the_sample_not_the_batch():
    processor = ViTImageProcessorPil(size={"height": 28, "width": 28})
    images = _images(n=32)
    transform = ImageClassificationTransform(
        processor, train=True, crop_scale=(0.3, 1.0), index_column="index", seed=5
    )
    whole = transform({"image": images, "index": list(range(32))})["pixel_values"]
    torch.manual_seed(123)  # the global generator plays no part
    part = transform({"image": images[20:24][::-1], "index": [23, 22, 21, 20]})["pixel_values"]
    torch.testing.assert_close(part, whole[20:24].flip(0), rtol=0, atol=0)
    transform.set_epoch(1)
    assert not torch.equal(transform({"image": images, "index": list(range(32))})["pixel_values"], whole)
    # Without the column, the transform falls back to torch's generator.
    torch.manual_seed(0)
    first = transform({"image": images})["pixel_values"]
    torch.manual_seed(0)
    torch.testing.assert_close(transform({"image": images})["pixel_values"], first)
    assert not torch.equal(first, whole)


def test_array_images_read_back_as_their_arrays_and_refuse_a_wrong_size():
    rng = np.random.default_rng(0)
    gray, colour = rng.integers(0, 256, (2, 5, 7), dtype=np.uint8), rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    for images in (gray, colour):
        items = array_image_items(images)
        np.testing.assert_array_equal(read_array_images(items), images)
        np.testing.assert_array_equal(np.asarray(open_image(items[1])), images[1])
    mixed = read_array_images(array_image_items(gray) + array_image_items(colour))  # two shapes: a list
    assert isinstance(mixed, list) and [array.shape for array in mixed] == [(5, 7)] * 2 + [(5, 7, 3)] * 2
    with pytest.raises(ValueError, match=r"shape \[5, 7\] holds 34 bytes, not 35"):
        read_array_image({"pixels": gray[0].tobytes()[:-1], "shape": [5, 7]})
    with pytest.raises(ValueError, match="uint8 images"):
        array_image_items(gray.astype(np.int16))
    with pytest.raises(ValueError, match="Cannot read an image from a int"):
        open_image(3)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", ["gray", "colour"])
def test_array_batches_give_what_pil_images_give(channels, kind):
    """The uint8 array path (the embedded default's: whole images at the model's size, no PIL) and every fallback
    equal the PIL path, bit for bit: evaluation, identity crop with flips and erasing, random crops, RandAugment."""
    rng = np.random.default_rng(1)
    shape = (24, 28, 28) + ((3,) if kind == "colour" else ())
    arrays = rng.integers(0, 256, shape, dtype=np.uint8)
    raw = {"image": array_image_items(arrays), "index": list(range(24))}
    decoded = {"image": [Image.fromarray(array) for array in arrays], "index": list(range(24))}
    processor = ViTImageProcessorPil(
        size={"height": 28, "width": 28}, image_mean=[0.2, 0.4, 0.6], image_std=[0.3, 0.2, 0.1]
    )
    settings = [
        dict(train=False),
        dict(train=True, crop_scale=(1.0, 1.0), random_erasing=0.5),
        dict(train=True, crop_scale=(0.4, 1.0)),
        dict(train=True, crop_scale=(1.0, 1.0), rand_augment="rand-m9"),
    ]
    for setting in settings:
        transform = ImageClassificationTransform(
            processor, num_channels=channels, index_column="index", seed=2, **setting
        )
        torch.testing.assert_close(
            transform(raw)["pixel_values"], transform(decoded)["pixel_values"], rtol=0, atol=0, msg=str(setting)
        )
        as_array = {"image": arrays, "index": list(range(24))}  # a numpy-formatted column: one array
        as_lists = {"image": arrays.tolist(), "index": list(range(24))}  # an Array2D/Array3D column
        for batch in (as_array, as_lists):
            torch.testing.assert_close(
                transform(batch)["pixel_values"], transform(decoded)["pixel_values"], rtol=0, atol=0, msg=str(setting)
            )


def test_without_image_decoding_only_touches_image_columns():
    from datasets import Dataset, Features, Value
    from datasets import Image as DatasetImage

    buffer = __import__("io").BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buffer, format="PNG")
    dataset = Dataset.from_dict(
        {"image": [{"bytes": buffer.getvalue(), "path": None}], "label": [1]},
        features=Features({"image": DatasetImage(), "label": Value("int64")}),
    )
    raw = without_image_decoding(dataset)
    assert raw.features["image"].decode is False and raw[0]["image"]["bytes"].startswith(b"\x89PNG")
    assert without_image_decoding(dataset, "label").features == dataset.features


def test_erasing_boxes_follow_timm_random_erasing():
    uniform = np.random.default_rng(0).random((4000, 22))
    boxes, found = sample_erasing_boxes(28, 28, uniform)
    assert found.mean() > 0.99
    top, left, bottom, right = boxes[found].T
    assert (top >= 0).all() and (left >= 0).all() and (bottom <= 28).all() and (right <= 28).all()
    height, width = bottom - top, right - left
    fraction = height * width / 784
    assert fraction.min() > 0.02 - 0.02 and fraction.max() < 1 / 3 + 0.05 and 0.12 < fraction.mean() < 0.22
    aspect = height / width
    assert aspect.min() >= 0.3 - 0.15 and aspect.max() <= 1 / 0.3 + 1.5
    assert len(set(top.tolist())) > 10 and len(set(left.tolist())) > 10


def test_random_erasing_replaces_one_rectangle_with_noise():
    processor = ViTImageProcessorPil(size={"height": 28, "width": 28})
    images = _images(n=48)
    batch = {"image": images, "index": list(range(48))}
    common = dict(train=True, crop_scale=(0.5, 1.0), index_column="index", seed=3)
    plain = ImageClassificationTransform(processor, **common)(batch)["pixel_values"]
    erasing = ImageClassificationTransform(processor, random_erasing=0.5, **common)
    erased = erasing(batch)["pixel_values"]
    changed = (erased != plain).any(1)  # [B, H, W]
    hit = changed.flatten(1).any(1)
    assert 10 < int(hit.sum()) < 38  # about half the images
    for index in torch.nonzero(hit).flatten().tolist():
        rows, cols = torch.nonzero(changed[index], as_tuple=True)
        box = (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1)
        # the changes fill one rectangle (noise equal to the original pixel is vanishingly rare)
        assert int(changed[index].sum()) == (box[1] - box[0]) * (box[3] - box[2])
        noise = erased[index][:, box[0] : box[1], box[2] : box[3]]
        assert abs(float(noise.mean())) < 1.0 and 0.5 < float(noise.std()) < 1.5
    # Keyed: the same image in another batch is erased the same way; crops are not disturbed by the erasing stream.
    again = erasing({"image": images[5:9], "index": [5, 6, 7, 8]})["pixel_values"]
    torch.testing.assert_close(again, erased[5:9], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"random_erasing=1.5 is a probability"):
        ImageClassificationTransform(processor, train=True, random_erasing=1.5)


def _mixing_examples(n=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "pixel_values": torch.rand(3, 8, 8, generator=generator),
            "labels": torch.tensor(i % 4),
            "sample_index": torch.tensor(100 + i),
        }
        for i in range(n)
    ]


def test_mixup_mixes_each_image_with_the_reversed_batch():
    examples = _mixing_examples()
    collator = MixupCutmixCollator(4, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1)
    batch = collator(examples)
    stacked = torch.stack([example["pixel_values"] for example in examples])
    targets = batch["labels"]
    assert targets.shape == (8, 4) and torch.allclose(targets.sum(1), torch.ones(8))
    # Image 0 (label 0) is mixed with image 7 (label 3): its target mass on label 0 gives lam.
    off = 0.1 / 4
    lam = (float(targets[0, 0]) - off) / (1 - 0.1)
    torch.testing.assert_close(batch["pixel_values"], stacked * lam + stacked.flip(0) * (1 - lam))
    torch.testing.assert_close(collator(_mixing_examples()), batch)  # keyed to the indices: reproducible
    collator.set_epoch(1)
    assert not torch.equal(collator(_mixing_examples())["labels"], targets)


def test_cutmix_pastes_a_box_and_weighs_labels_by_its_area():
    examples = _mixing_examples()
    collator = MixupCutmixCollator(4, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    stacked = torch.stack([example["pixel_values"] for example in examples])
    for epoch in range(6):
        collator.set_epoch(epoch)
        batch = collator(examples)
        pasted = (batch["pixel_values"] == stacked.flip(0)) & (batch["pixel_values"] != stacked)
        kept = batch["pixel_values"] == stacked
        assert bool((pasted | kept).all())
        fraction = pasted[0, 0].float().mean()
        assert float(batch["labels"][0, 0]) == pytest.approx(1 - float(fraction), abs=1e-6)


def test_mixing_passes_evaluation_batches_and_checks_its_arguments():
    collator = MixupCutmixCollator(4)
    evaluation = [{"pixel_values": torch.zeros(3, 8, 8), "labels": torch.tensor(1)} for _ in range(3)]
    batch = collator(evaluation)
    assert batch["labels"].tolist() == [1, 1, 1] and batch["labels"].dtype == torch.long
    for kwargs, message in (
        (dict(mixup_alpha=-1), "mixup_alpha=-1"),
        (dict(mixup_alpha=0, cutmix_alpha=0), "both 0"),
        (dict(switch_prob=2), "switch_prob=2"),
        (dict(num_labels=1), "num_labels=1"),
    ):
        with pytest.raises(ValueError, match=message):
            MixupCutmixCollator(**{"num_labels": 4, **kwargs})


def test_with_sample_index_adds_the_positions():
    from datasets import Dataset

    dataset = with_sample_index(Dataset.from_dict({"label": [3, 1, 2]}))
    assert dataset["sample_index"] == [0, 1, 2]
    with pytest.raises(ValueError, match="already has a column 'label'"):
        with_sample_index(dataset, "label")


def test_transform_bad_inputs():
    processor = ViTImageProcessorPil(size={"height": 28, "width": 28})
    with pytest.raises(ValueError, match="1 or 3 channels"):
        ImageClassificationTransform(processor, num_channels=4)
    with pytest.raises(ValueError, match="crop scale"):
        ImageClassificationTransform(processor, train=True, crop_scale=(0.5, 1.5))
    assert processor_image_size(ViTImageProcessorPil(size={"shortest_edge": 40})) == (40, 40)


def test_collate_stacks_examples():
    examples = [{"pixel_values": torch.full((3, 2, 2), float(i)), "labels": torch.tensor(i)} for i in range(3)]
    batch = collate_image_classification(examples)
    assert batch["pixel_values"].shape == (3, 3, 2, 2) and batch["labels"].tolist() == [0, 1, 2]


def test_keyed_augmentation_is_the_same_whatever_the_batches_and_loader_workers():
    """docs/TRAINING.md: a sample gets the same augmentation in a given epoch whatever the batch it lands in and the
    number of data-loader workers (here: batches of 8 in order, and of 5 shuffled over 2 worker processes)."""
    from datasets import Dataset, Features, Value
    from torch.utils.data import DataLoader

    images = np.random.default_rng(4).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    features = Features({"image": array_image_feature(), "label": Value("int64")})
    dataset = with_sample_index(
        Dataset.from_dict({"image": array_image_items(images), "label": [0] * 20}, features=features)
    )
    processor = ViTImageProcessorPil(size={"height": 28, "width": 28})
    transform = ImageClassificationTransform(
        processor, train=True, crop_scale=(0.3, 1.0), index_column="sample_index", seed=3, random_erasing=0.5
    )
    transform.set_epoch(2)
    dataset = dataset.with_transform(transform)

    def by_sample(batch_size, workers, shuffle):
        collate = lambda rows: (torch.stack([r["pixel_values"] for r in rows]), [int(r["sample_index"]) for r in rows])  # noqa: E731
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(0),
        )
        out = {}
        for pixels, indices in loader:
            out.update(zip(indices, pixels))
        return out

    plain, other = by_sample(8, 0, False), by_sample(5, 2, True)
    assert sorted(plain) == sorted(other) == list(range(20))
    for index in range(20):
        assert torch.equal(plain[index], other[index]), index
    transform.set_epoch(3)  # another epoch, other draws: the comparison can fail
    assert not all(torch.equal(plain[i], dataset[i : i + 1]["pixel_values"][0]) for i in range(20))
