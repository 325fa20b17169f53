"""Data for the training example: the embedded default (Fashion-MNIST, read offline from Debian's
`dataset-fashion-mnist` package) and torchvision-free image transforms applied on the fly."""

import gzip
import io
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

from .augmentation import keyed_uniform, sample_erasing_boxes, sample_resized_crop_boxes, splitmix64
from .rand_augment import RandAugment

FASHION_MNIST_DIR = Path(os.environ.get("MJP_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
INSTALL_HINT = "install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu)"


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(f"{path} is not an IDX file of the expected kind (magic {found}, expected {magic}).")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_available(data_dir: Path | str = FASHION_MNIST_DIR) -> bool:
    return all((Path(data_dir) / name).is_file() for pair in _FILES.values() for name in pair)


def load_fashion_mnist_arrays(split: str, data_dir: Path | str = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """`(images uint8 [n, 28, 28], labels int64 [n])` of the `train` (60,000) or `test` (10,000) split."""
    if split not in _FILES:
        raise ValueError(f"Unknown Fashion-MNIST split {split!r}; choose 'train' or 'test'.")
    data_dir = Path(data_dir)
    if not fashion_mnist_available(data_dir):
        raise FileNotFoundError(f"Fashion-MNIST files are missing from {data_dir}; {INSTALL_HINT}.")
    images_file, labels_file = _FILES[split]
    images = _read_idx(data_dir / images_file, 2051)
    labels = _read_idx(data_dir / labels_file, 2049).astype(np.int64)
    return images, labels


def _encode_pgm(images: np.ndarray) -> list[bytes]:
    """Binary PGM (Netpbm "P5") files of uint8 `[n, h, w]` images: a short header before the raw pixels. PIL decodes
    them as mode "L" images; encoding is a byte concatenation, far cheaper than PNG's compression."""
    header = f"P5\n{images.shape[2]} {images.shape[1]}\n255\n".encode("ascii")
    return [header + image.tobytes() for image in images]


def load_fashion_mnist(data_dir: Path | str = FASHION_MNIST_DIR):
    """A `datasets.DatasetDict` with `train` and `test` splits, features `image` (`Image`) and `label`
    (`ClassLabel` with the ten Fashion-MNIST names), read from the local IDX files with no network access."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    features = Features({"image": Image(), "label": ClassLabel(names=FASHION_MNIST_LABELS)})
    splits = {}
    for split in _FILES:
        images, labels = load_fashion_mnist_arrays(split, data_dir)
        # Ready-encoded bytes skip the per-image PNG encoding `datasets` would do for every one of the 70,000 images.
        encoded = [{"bytes": data, "path": None} for data in _encode_pgm(images)]
        splits[split] = Dataset.from_dict({"image": encoded, "label": labels.tolist()}, features=features)
    return DatasetDict(splits)


# ---------------------------------------------------------------------------------------------------------------
# Transforms without torchvision: PIL for the geometry, numpy/torch for the arithmetic.
# ---------------------------------------------------------------------------------------------------------------


def processor_image_size(image_processor) -> tuple[int, int]:
    """`(height, width)` of the images the processor outputs: its `crop_size` when it centre-crops (DeiT), else its
    `size` (`{"height", "width"}` or `{"shortest_edge"}`)."""
    size = image_processor.size
    if getattr(image_processor, "do_center_crop", False) and getattr(image_processor, "crop_size", None) is not None:
        size = image_processor.crop_size
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    if get("height") is not None and get("width") is not None:
        return int(get("height")), int(get("width"))
    if get("shortest_edge") is not None:
        return int(get("shortest_edge")), int(get("shortest_edge"))
    raise ValueError(
        f"Cannot tell the output size of the image processor (size={size!r}); give it `size={{'height': H, 'width': W}}`."
    )


def _image_mode(num_channels: int) -> str:
    if num_channels not in (1, 3):
        raise ValueError(f"Images can be converted to 1 or 3 channels, not num_channels={num_channels}.")
    return "RGB" if num_channels == 3 else "L"


_NETPBM_HEADER = re.compile(rb"\A(P[56])\s+(\d+)\s+(\d+)\s+255\s")


def decode_netpbm(data: bytes) -> np.ndarray | None:
    """The pixels of a binary 8-bit PGM (`P5`, `[H, W]`) or PPM (`P6`, `[H, W, 3]`) file, or `None` for anything else.

    The embedded default stores its images so; reading them here skips PIL's format detection and image objects."""
    match = _NETPBM_HEADER.match(data)
    if match is None:
        return None
    width, height = int(match[2]), int(match[3])
    channels = 1 if match[1] == b"P5" else 3
    if len(data) - match.end() < width * height * channels:
        return None
    pixels = np.frombuffer(data, dtype=np.uint8, count=width * height * channels, offset=match.end())
    return pixels.reshape(height, width, channels) if channels == 3 else pixels.reshape(height, width)


def open_image(item) -> PILImage.Image:
    """A PIL image from a `datasets` Image value: decoded already, or a `{"bytes", "path"}` dict (`decode=False`)."""
    if isinstance(item, PILImage.Image):
        return item
    if isinstance(item, dict) and item.get("bytes"):
        return PILImage.open(io.BytesIO(item["bytes"]))
    if isinstance(item, dict) and item.get("path"):
        return PILImage.open(item["path"])
    raise ValueError(f"Cannot read an image from a {type(item).__name__} ({item!r:.80}); the image column must hold "
                     "images (a datasets Image feature).")


def without_image_decoding(dataset, column: str = "image"):
    """`dataset` with its `Image` column left undecoded (`{"bytes", "path"}`): `ImageClassificationTransform` opens the
    images itself, and reads the embedded default's PGM bytes without PIL (5 times faster for a batch)."""
    from datasets import Image

    feature = dataset.features.get(column)
    if isinstance(feature, Image) and feature.decode:
        return dataset.cast_column(column, Image(decode=False))
    return dataset


def _to_pil(arrays: np.ndarray) -> list[PILImage.Image]:
    return [PILImage.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array) for array in arrays]


# Image processors whose whole pipeline is resize, rescale, normalise.
_RESIZE_RESCALE_NORMALIZE_PROCESSORS = ("ViTImageProcessor", "ViTImageProcessorPil", "ViTImageProcessorFast")


class ImageClassificationTransform:
    """Turns a batch of a `datasets` image-classification dataset into model inputs, on the fly.

    Use it with `dataset.with_transform(...)` / `set_transform(...)`. Training (`train=True`): a random-resized crop
    straight to the model's size (one PIL resize per image over the crop box), an optional horizontal flip, then
    the image processor's rescale and normalisation. Evaluation: the image processor itself (resize, rescale,
    normalise), deterministic. Grayscale images become RGB when the model has 3 channels, and back.

    `rand_augment` (a timm spec such as `rand-m9-mstd0.5-inc1`, see `rand_augment.RandAugment`) runs after the crop
    and flip; `random_erasing` (a probability; DeiT uses 0.25) adds timm-style random erasing after normalisation.

    Training randomness: when the batch has an `index_column` (each example's index in the dataset, added with
    `with_sample_index`), every crop, flip, RandAugment op and erasing is drawn from `keyed_uniform(seed, epoch,
    index)` (one stream each), with `set_epoch`
    called at each epoch (`training.TransformEpochCallback`): an interrupted run resumes with the very same
    augmentations, whatever the number of data-loader workers. Without it the draws come from torch's default
    generator. Training outputs then carry the index too, under the same name, for `MixupCutmixCollator`.

    Returns `{"pixel_values": float32 [B, C, H, W], "labels": int64 [B]}` (plus the index column in training).
    """

    CROP_ATTEMPTS = 10
    ERASE_ATTEMPTS = 10

    def __init__(
        self,
        image_processor,
        *,
        num_channels: int = 3,
        train: bool = False,
        image_column: str = "image",
        label_column: str = "label",
        crop_scale: tuple[float, float] = (0.08, 1.0),
        horizontal_flip: bool = True,
        index_column: str | None = None,
        seed: int = 0,
        random_erasing: float = 0.0,
        rand_augment: str | None = None,
    ):
        if not 0 <= random_erasing <= 1:
            raise ValueError(f"random_erasing={random_erasing} is a probability: give a value in [0, 1] (DeiT: 0.25).")
        self.image_processor = image_processor
        self.mode = _image_mode(num_channels)
        self.train = train
        self.image_column = image_column
        self.label_column = label_column
        self.crop_scale = tuple(crop_scale)
        self.horizontal_flip = horizontal_flip
        self.size = processor_image_size(image_processor)
        self.index_column = index_column
        self.seed = seed
        self.epoch = 0
        self.random_erasing = random_erasing
        self.rand_augment = None
        if rand_augment:
            # Geometric ops fill with the mean colour the processor normalises by, as timm derives it.
            mean = np.reshape(getattr(image_processor, "image_mean", 0.5), -1)
            fill = tuple(int(min(255, round(255 * float(mean[index % len(mean)])))) for index in range(3))
            self.rand_augment = RandAugment.from_spec(rand_augment, fill=fill)
        if train:
            sample_resized_crop_boxes(np.ones((0, 2)), scale=self.crop_scale)  # validates the scale early

    def _normalise(self, arrays: np.ndarray) -> torch.Tensor:
        processor = self.image_processor
        pixels = arrays.astype(np.float32)
        if getattr(processor, "do_rescale", True):
            pixels *= float(processor.rescale_factor)
        if getattr(processor, "do_normalize", True):
            channels = pixels.shape[-1]
            mean = np.asarray(processor.image_mean, dtype=np.float32).reshape(-1)[:channels]
            std = np.asarray(processor.image_std, dtype=np.float32).reshape(-1)[:channels]
            pixels = (pixels - mean) / std
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))

    def _channel_statistics(self) -> dict:
        # A processor with RGB statistics normalising grayscale input for a 1-channel model: use the first channel's.
        processor, channels = self.image_processor, len(self.mode)
        if np.size(processor.image_mean) == channels or not getattr(processor, "do_normalize", True):
            return {}
        return {"image_mean": list(np.reshape(processor.image_mean, -1)[:channels]),
                "image_std": list(np.reshape(processor.image_std, -1)[:channels])}

    def set_epoch(self, epoch: int) -> None:
        """The epoch that keys the training augmentation (see the class docstring)."""
        self.epoch = int(epoch)

    def _uniform(self, batch: dict, count: int, draws: int, stream: int = 0) -> np.ndarray:
        if self.index_column is not None and self.index_column in batch:
            return keyed_uniform(self.seed, self.epoch, batch[self.index_column], draws, stream=stream)
        return torch.rand(count, draws, dtype=torch.float64).numpy()

    def _erase(self, pixel_values: torch.Tensor, uniform: np.ndarray) -> torch.Tensor:
        """Random erasing in timm's "pixel" mode: a rectangle of normal noise (in normalised units)."""
        height, width = pixel_values.shape[-2:]
        boxes, found = sample_erasing_boxes(height, width, uniform[:, 2:])
        erased = np.flatnonzero((uniform[:, 0] < self.random_erasing) & found)
        for index in erased:  # a quarter of the batch at DeiT's 0.25; the noise is seeded per sample
            top, left, bottom, right = boxes[index].tolist()
            generator = torch.Generator().manual_seed(int(uniform[index, 1] * 2**53))
            pixel_values[index, :, top:bottom, left:right] = torch.randn(
                pixel_values.shape[1], bottom - top, right - left, generator=generator)
        return pixel_values

    def _is_rescale_normalize(self) -> bool:
        # A ViT image processor on images already at its size only rescales and normalises: that is done here in one
        # vectorised pass (benchmarks/data_loading.py measures it). Other processors (a centre crop, say) and other
        # sizes run it.
        return type(self.image_processor).__name__ in _RESIZE_RESCALE_NORMALIZE_PROCESSORS

    def _eval_pixels(self, images: list | np.ndarray) -> torch.Tensor:
        height, width = self.size
        if self._is_rescale_normalize() and (
            isinstance(images, np.ndarray) or all(image.size == (width, height) for image in images)
        ):
            return self._normalise(images if isinstance(images, np.ndarray) else
                                   np.stack([np.asarray(image).reshape(height, width, -1) for image in images]))
        if isinstance(images, np.ndarray):
            images = _to_pil(images)
        return self.image_processor(images, return_tensors="pt", **self._channel_statistics())["pixel_values"]

    def _as_array(self, items: list) -> np.ndarray | None:
        """The batch as one uint8 `[B, H, W, C]` array when every item is undecoded PGM/PPM at the model's size (the
        embedded default), else `None`."""
        height, width = self.size
        arrays = []
        for item in items:
            data = item.get("bytes") if isinstance(item, dict) else None
            array = decode_netpbm(data) if data else None
            if array is None or array.shape[:2] != (height, width) or (arrays and array.shape != arrays[0].shape):
                return None
            arrays.append(array)
        stacked = np.stack(arrays).reshape(len(arrays), height, width, -1)
        if stacked.shape[-1] == len(self.mode):
            return stacked
        if stacked.shape[-1] == 1:
            return np.repeat(stacked, 3, axis=-1)  # what PIL's "L" -> "RGB" does
        return None  # RGB -> L weights the channels: PIL's job

    def _train_pixels(self, images: list | np.ndarray, uniform: np.ndarray,
                      augment_uniform: np.ndarray | None) -> torch.Tensor:
        height, width = self.size
        if isinstance(images, np.ndarray):
            sizes = np.tile([width, height], (len(images), 1))
        else:
            sizes = np.array([image.size for image in images]).reshape(-1, 2)
        boxes = sample_resized_crop_boxes(sizes, scale=self.crop_scale, attempts=self.CROP_ATTEMPTS,
                                          uniform=uniform[:, :-1])
        flips = (uniform[:, -1] < 0.5) & self.horizontal_flip
        if isinstance(images, np.ndarray):
            if self.rand_augment is None and (boxes == [0, 0, width, height]).all():
                # Whole images at the model's size: the crop is the identity, the flip an index.
                return self._normalise(np.where(flips[:, None, None, None], images[:, :, ::-1], images))
            images = _to_pil(images)
        resample = PILImage.Resampling(int(getattr(self.image_processor, "resample", PILImage.Resampling.BILINEAR)))
        arrays = np.empty((len(images), height, width, len(self.mode)), dtype=np.uint8)
        for index, (image, box, flip) in enumerate(zip(images, boxes, flips)):
            # PIL decodes lazily and crops + resizes in one call; no torchvision needed.
            crop = image.resize((width, height), resample=resample, box=tuple(int(v) for v in box))
            if flip:
                crop = crop.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)
            if self.rand_augment is not None:
                crop = self.rand_augment(crop, augment_uniform[index])
            arrays[index] = np.asarray(crop).reshape(height, width, -1)
        return self._normalise(arrays)

    def _open(self, batch: dict, position: int) -> PILImage.Image:
        item = batch[self.image_column][position]
        try:
            return open_image(item).convert(self.mode)  # PIL reads the pixels here: a damaged file fails here
        except OSError as error:
            if isinstance(item, dict) and item.get("path"):
                name = str(item["path"])
            elif self.index_column is not None and self.index_column in batch:
                name = f"at index {batch[self.index_column][position]} of the dataset"
            else:
                name = f"number {position} of its batch"
            raise OSError(f"Cannot read the image {name} (column {self.image_column!r}): {error}. Repair or remove "
                          "it.") from error

    def __call__(self, batch: dict) -> dict:
        images = self._as_array(batch[self.image_column])
        if images is None:
            images = [self._open(batch, position) for position in range(len(batch[self.image_column]))]
        if self.train:
            # crop attempts, crop position, flip
            uniform = self._uniform(batch, len(images), 2 * self.CROP_ATTEMPTS + 3)
            augment_uniform = None
            if self.rand_augment is not None:
                augment_uniform = self._uniform(batch, len(images), self.rand_augment.draws, stream=2)
            pixel_values = self._train_pixels(images, uniform, augment_uniform)
            if self.random_erasing > 0:
                # apply, noise seed, area and aspect attempts, position
                draws = 2 + 2 * self.ERASE_ATTEMPTS + 2
                pixel_values = self._erase(pixel_values, self._uniform(batch, len(images), draws, stream=1))
        else:
            pixel_values = self._eval_pixels(images)
        outputs = {"pixel_values": pixel_values}
        if self.label_column in batch:
            outputs["labels"] = torch.as_tensor(batch[self.label_column], dtype=torch.long)
        if self.train and self.index_column is not None and self.index_column in batch:
            outputs[self.index_column] = torch.as_tensor(batch[self.index_column], dtype=torch.long)  # keys Mixup
        return outputs


def with_sample_index(dataset, column: str = "sample_index"):
    """`dataset` with a column holding each example's index, which keys its augmentation (see
    `ImageClassificationTransform`)."""
    if column in dataset.column_names:
        raise ValueError(f"The dataset already has a column {column!r}; choose another name for the sample index.")
    return dataset.add_column(column, np.arange(len(dataset), dtype=np.int64))


def collate_image_classification(examples: list[dict]) -> dict:
    """Stack the transformed examples of a batch (the Trainer's `data_collator`)."""
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.stack([torch.as_tensor(example["labels"]) for example in examples])
    return batch


class MixupCutmixCollator:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) over a training batch, as timm's `Mixup` in its default
    batch mode, which DeiT and the MJP release train with: one mixing coefficient per batch, each image mixed with
    the batch's reverse, labels turned into label-smoothed soft targets mixed alike.

    A batch is CutMix with probability `switch_prob` when both are on. CutMix pastes a box of area about `1 - lam` and
    corrects `lam` to the pasted area. Only batches whose examples carry `index_key` (the training set's, see
    `ImageClassificationTransform`) are mixed, with randomness keyed to `(seed, epoch, their indices)`; evaluation
    batches are only stacked. `MJPTrainer` trains on the soft targets with a soft cross-entropy.
    """

    def __init__(
        self,
        num_labels: int,
        *,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        index_key: str = "sample_index",
        seed: int = 0,
    ):
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if value < 0:
                raise ValueError(f"{name}={value} must be >= 0 (0 turns it off; DeiT: mixup 0.8, cutmix 1.0).")
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ValueError("mixup_alpha and cutmix_alpha are both 0: nothing to mix; use collate_image_classification.")
        for name, value in (("switch_prob", switch_prob), ("label_smoothing", label_smoothing)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name}={value} must be in [0, 1].")
        if num_labels < 2:
            raise ValueError(f"num_labels={num_labels}: mixing labels needs at least 2 classes.")
        self.num_labels = num_labels
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing
        self.index_key = index_key
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self, indices: np.ndarray) -> np.random.Generator:
        with np.errstate(over="ignore"):
            batch_key = int(np.bitwise_xor.reduce(splitmix64(indices.astype(np.uint64))))
        return np.random.default_rng([self.seed % 2**63, self.epoch, batch_key])

    def soft_targets(self, labels: torch.Tensor) -> torch.Tensor:
        off = self.label_smoothing / self.num_labels
        targets = torch.full((len(labels), self.num_labels), off)
        return targets.scatter_(1, labels.long().view(-1, 1), 1 - self.label_smoothing + off)

    def __call__(self, examples: list[dict]) -> dict:
        batch = collate_image_classification(examples)
        if self.index_key not in examples[0] or "labels" not in batch:
            return batch
        rng = self._rng(np.array([int(example[self.index_key]) for example in examples]))
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or rng.random() < self.switch_prob)
        lam = float(rng.beta(*(2 * [self.cutmix_alpha if use_cutmix else self.mixup_alpha])))
        pixels, partner = batch["pixel_values"], batch["pixel_values"].flip(0)
        if use_cutmix:
            height, width = pixels.shape[-2:]
            cut_h, cut_w = int(height * np.sqrt(1 - lam)), int(width * np.sqrt(1 - lam))
            centre_y, centre_x = int(rng.integers(height)), int(rng.integers(width))
            top, bottom = np.clip([centre_y - cut_h // 2, centre_y + cut_h // 2], 0, height)
            left, right = np.clip([centre_x - cut_w // 2, centre_x + cut_w // 2], 0, width)
            pixels = pixels.clone()
            pixels[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
            lam = 1 - (bottom - top) * (right - left) / (height * width)
        else:
            pixels = pixels * lam + partner * (1 - lam)
        targets = self.soft_targets(batch["labels"])
        return {"pixel_values": pixels, "labels": targets * lam + targets.flip(0) * (1 - lam)}
