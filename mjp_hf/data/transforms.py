"""Torchvision-free image transforms applied on the fly: PIL for the geometry of training crops, and the image
processor's own arithmetic (`pixels.pixel_values`) for every image."""

import io

import numpy as np
import torch
from PIL import Image as PILImage

from .arrays import is_array_image, read_array_images
from .augmentation import keyed_uniform, sample_erasing_boxes, sample_resized_crop_boxes
from .pixels import image_mode, pixel_values, processor_image_size, uint8_batch
from .rand_augment import RandAugment


def _uint8(array: np.ndarray) -> np.ndarray:
    if (
        array.dtype != np.uint8
        and np.issubdtype(array.dtype, np.integer)
        and array.size
        and 0 <= array.min() <= array.max() <= 255
    ):
        return array.astype(np.uint8)
    return array


def open_image(item) -> PILImage.Image:
    """A PIL image from a `datasets` image value: decoded already, a `{"bytes", "path"}` dict (`decode=False`), or a
    uint8 array (`arrays.array_image_items`, or an array itself)."""
    if isinstance(item, PILImage.Image):
        return item
    if is_array_image(item):
        item = read_array_images([item])[0]
    if isinstance(item, list):  # an `Array2D`/`Array3D` value as `datasets` hands it over: nested lists
        item = _uint8(np.asarray(item))
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim in (2, 3):
        return PILImage.fromarray(item[..., 0] if item.ndim == 3 and item.shape[-1] == 1 else item)
    if isinstance(item, dict) and item.get("bytes"):
        return PILImage.open(io.BytesIO(item["bytes"]))
    if isinstance(item, dict) and item.get("path"):
        return PILImage.open(item["path"])
    raise ValueError(
        f"Cannot read an image from a {type(item).__name__} ({item!r:.80}); the image column must hold "
        "images (a datasets Image feature) or uint8 arrays."
    )


class ImageClassificationTransform:
    """Turns a batch of a `datasets` image-classification dataset into model inputs, on the fly.

    Use it with `dataset.with_transform(...)` / `set_transform(...)`. Training (`train=True`): a random-resized crop
    straight to the model's size (one PIL resize per image over the crop box), an optional horizontal flip, then
    the image processor's rescale and normalisation. Evaluation: the image processor itself (resize, rescale,
    normalise), deterministic. Both through `pixels.pixel_values`, the processor's own arithmetic to the bit.
    Grayscale images become RGB when the model has 3 channels, and back. The images may be PIL images, undecoded
    image files (`without_image_decoding`) or uint8 arrays (`arrays.array_image_items`, the embedded default's).

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
        self.mode = image_mode(num_channels)
        self.num_channels = num_channels
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
            # ... and resample with the processor's filter, as timm passes the training interpolation to the ops.
            self.rand_augment = RandAugment.from_spec(rand_augment, fill=fill, resample=self._resample())
        if train:
            sample_resized_crop_boxes(np.ones((0, 2)), scale=self.crop_scale)  # validates the scale early

    def _resample(self) -> PILImage.Resampling:
        return PILImage.Resampling(int(getattr(self.image_processor, "resample", PILImage.Resampling.BILINEAR)))

    def set_epoch(self, epoch: int) -> None:
        """The epoch that keys the training augmentation (see the class docstring)."""
        self.epoch = int(epoch)

    def _uniform(self, batch: dict, count: int, draws: int, stream: int = 0) -> np.ndarray:
        if self.index_column is not None and self.index_column in batch:
            return keyed_uniform(self.seed, self.epoch, batch[self.index_column], draws, stream=stream)
        return torch.rand(count, draws, dtype=torch.float64).numpy()

    def _erase(self, pixels: torch.Tensor, uniform: np.ndarray) -> torch.Tensor:
        """Random erasing in timm's "pixel" mode: a rectangle of normal noise (in normalised units)."""
        height, width = pixels.shape[-2:]
        boxes, found = sample_erasing_boxes(height, width, uniform[:, 2:])
        erased = np.flatnonzero((uniform[:, 0] < self.random_erasing) & found)
        for index in erased:  # a quarter of the batch at DeiT's 0.25; the noise is seeded per sample
            top, left, bottom, right = boxes[index].tolist()
            generator = torch.Generator().manual_seed(int(uniform[index, 1] * 2**53))
            pixels[index, :, top:bottom, left:right] = torch.randn(
                pixels.shape[1], bottom - top, right - left, generator=generator
            )
        return pixels

    def _as_array(self, batch: dict) -> np.ndarray | None:
        """The batch's images as one uint8 `[B, H, W, C]` array without PIL (uint8 array values, one shape), else
        `None`: the images are then opened one by one."""
        items = batch[self.image_column]
        if isinstance(items, np.ndarray):
            return uint8_batch(items, self.num_channels)
        if len(items) and all(is_array_image(item) for item in items):
            return uint8_batch(read_array_images(items), self.num_channels)
        if len(items) and all(isinstance(item, np.ndarray) for item in items):
            return uint8_batch(items, self.num_channels)
        if len(items) and all(isinstance(item, list) for item in items):  # `Array2D`/`Array3D` columns
            try:
                return uint8_batch(_uint8(np.asarray(items)), self.num_channels)
            except ValueError:  # ragged: images of several sizes
                return None
        return None

    def _train_pixels(
        self, images: list | np.ndarray, uniform: np.ndarray, augment_uniform: np.ndarray | None
    ) -> torch.Tensor:
        height, width = self.size
        if isinstance(images, np.ndarray):
            sizes = np.tile([images.shape[2], images.shape[1]], (len(images), 1))
        else:
            sizes = np.array([image.size for image in images]).reshape(-1, 2)
        boxes = sample_resized_crop_boxes(
            sizes, scale=self.crop_scale, attempts=self.CROP_ATTEMPTS, uniform=uniform[:, :-1]
        )
        flips = (uniform[:, -1] < 0.5) & self.horizontal_flip
        if isinstance(images, np.ndarray):
            if (
                self.rand_augment is None
                and images.shape[1:3] == (height, width)
                and (boxes == [0, 0, width, height]).all()
            ):
                # Whole images at the model's size: the crop is the identity, the flip an index.
                if flips.any():
                    images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
                return pixel_values(images, self.image_processor, self.num_channels, resize=False)
            images = [open_image(array).convert(self.mode) for array in images]
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
        return pixel_values(arrays, self.image_processor, self.num_channels, resize=False)

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
        images = self._as_array(batch)
        if images is None:
            images = [self._open(batch, position) for position in range(len(batch[self.image_column]))]
        if self.train:
            # crop attempts, crop position, flip
            uniform = self._uniform(batch, len(images), 2 * self.CROP_ATTEMPTS + 3)
            augment_uniform = None
            if self.rand_augment is not None:
                augment_uniform = self._uniform(batch, len(images), self.rand_augment.draws, stream=2)
            pixels = self._train_pixels(images, uniform, augment_uniform)
            if self.random_erasing > 0:
                # apply, noise seed, area and aspect attempts, position
                draws = 2 + 2 * self.ERASE_ATTEMPTS + 2
                pixels = self._erase(pixels, self._uniform(batch, len(images), draws, stream=1))
        else:
            pixels = pixel_values(images, self.image_processor, self.num_channels)
        outputs = {"pixel_values": pixels}
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
