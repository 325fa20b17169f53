"""Torchvision-free image transforms applied on the fly: PIL for the geometry, numpy/torch for the arithmetic, and a
fast path that reads binary Netpbm bytes (the embedded default's encoding) without PIL."""

import io
import re

import numpy as np
import torch
from PIL import Image as PILImage

from .augmentation import keyed_uniform, sample_erasing_boxes, sample_resized_crop_boxes
from .rand_augment import RandAugment


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
    raise ValueError(
        f"Cannot read an image from a {type(item).__name__} ({item!r:.80}); the image column must hold "
        "images (a datasets Image feature)."
    )


def _to_pil(arrays: np.ndarray, mode: str) -> list[PILImage.Image]:
    """uint8 `[B, H, W, C]` -> PIL images of `mode` ("L" to "RGB" copies the channel; the reverse is not asked)."""
    return [
        PILImage.fromarray(array.squeeze(-1)).convert(mode) if array.shape[-1] == 1 else PILImage.fromarray(array)
        for array in arrays
    ]


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
        self._tables: dict[tuple, np.ndarray] = {}  # per channel count and processor statistics
        if rand_augment:
            # Geometric ops fill with the mean colour the processor normalises by, as timm derives it.
            mean = np.reshape(getattr(image_processor, "image_mean", 0.5), -1)
            fill = tuple(int(min(255, round(255 * float(mean[index % len(mean)])))) for index in range(3))
            # ... and resample with the processor's filter, as timm passes the training interpolation to the ops.
            self.rand_augment = RandAugment.from_spec(rand_augment, fill=fill, resample=self._resample())
        if train:
            sample_resized_crop_boxes(np.ones((0, 2)), scale=self.crop_scale)  # validates the scale early

    def _resample(self) -> PILImage.Resampling:
        return PILImage.Resampling(int(getattr(self.image_processor, "resample", PILImage.Resampling.BILINEAR)))

    def _normalise(self, arrays: np.ndarray) -> torch.Tensor:
        """uint8 `[B, H, W, C]` -> the processor's rescaled and normalised float32 `[B, C, H, W]`, through a table of
        the 256 values per channel: the same arithmetic as the processor's, once per value instead of per pixel.
        A grayscale batch (`C` = 1) for an RGB model fills the three channels from its one, as PIL's "L" -> "RGB"."""
        channels = len(self.mode) if arrays.shape[-1] == 1 else arrays.shape[-1]
        table = self._value_table(channels)
        pixels = np.empty((arrays.shape[0], channels, *arrays.shape[1:3]), dtype=np.float32)
        for channel in range(channels):
            pixels[:, channel] = table[channel][arrays[..., min(channel, arrays.shape[-1] - 1)]]
        return torch.from_numpy(pixels)

    def _value_table(self, channels: int) -> np.ndarray:
        """float32 `[channels, 256]`: what the processor makes of each uint8 value in each channel."""
        processor = self.image_processor
        key = (
            channels,
            getattr(processor, "do_rescale", True),
            float(getattr(processor, "rescale_factor", 1.0)),
            getattr(processor, "do_normalize", True),
            tuple(np.reshape(getattr(processor, "image_mean", ()), -1).tolist()),
            tuple(np.reshape(getattr(processor, "image_std", ()), -1).tolist()),
        )
        if key not in self._tables:
            values = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None], (256, channels))
            pixels = values.astype(np.float32)
            if getattr(processor, "do_rescale", True):
                # In float64 and back, as transformers rescales: the pixels are then the processor's to the bit.
                pixels = (values.astype(np.float64) * float(processor.rescale_factor)).astype(np.float32)
            if getattr(processor, "do_normalize", True):
                mean = np.asarray(processor.image_mean, dtype=np.float32).reshape(-1)[:channels]
                std = np.asarray(processor.image_std, dtype=np.float32).reshape(-1)[:channels]
                pixels = (pixels - mean) / std
            self._tables[key] = np.ascontiguousarray(pixels.T)
        return self._tables[key]

    def _channel_statistics(self) -> dict:
        # A processor with RGB statistics normalising grayscale input for a 1-channel model: use the first channel's.
        processor, channels = self.image_processor, len(self.mode)
        if np.size(processor.image_mean) == channels or not getattr(processor, "do_normalize", True):
            return {}
        return {
            "image_mean": list(np.reshape(processor.image_mean, -1)[:channels]),
            "image_std": list(np.reshape(processor.image_std, -1)[:channels]),
        }

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
                pixel_values.shape[1], bottom - top, right - left, generator=generator
            )
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
            return self._normalise(
                images
                if isinstance(images, np.ndarray)
                else np.stack([np.asarray(image).reshape(height, width, -1) for image in images])
            )
        if isinstance(images, np.ndarray):
            images = _to_pil(images, self.mode)
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
        if stacked.shape[-1] == len(self.mode) or stacked.shape[-1] == 1:
            return stacked  # grayscale stays one channel: `_normalise` and `_to_pil` make RGB of it
        return None  # RGB -> L weights the channels: PIL's job

    def _train_pixels(
        self, images: list | np.ndarray, uniform: np.ndarray, augment_uniform: np.ndarray | None
    ) -> torch.Tensor:
        height, width = self.size
        if isinstance(images, np.ndarray):
            sizes = np.tile([width, height], (len(images), 1))
        else:
            sizes = np.array([image.size for image in images]).reshape(-1, 2)
        boxes = sample_resized_crop_boxes(
            sizes, scale=self.crop_scale, attempts=self.CROP_ATTEMPTS, uniform=uniform[:, :-1]
        )
        flips = (uniform[:, -1] < 0.5) & self.horizontal_flip
        if isinstance(images, np.ndarray):
            if self.rand_augment is None and (boxes == [0, 0, width, height]).all():
                # Whole images at the model's size: the crop is the identity, the flip an index.
                if flips.any():
                    images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
                return self._normalise(images)
            images = _to_pil(images, self.mode)
        resample = self._resample()
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
            raise OSError(
                f"Cannot read the image {name} (column {self.image_column!r}): {error}. Repair or remove it."
            ) from error

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


def collate_image_classification(examples: list[dict]) -> dict:
    """Stack the transformed examples of a batch (the Trainer's `data_collator`)."""
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.stack([torch.as_tensor(example["labels"]) for example in examples])
    return batch
