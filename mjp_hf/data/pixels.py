"""From uint8 images to a model's `pixel_values`: one path for training, evaluation, the study and the audits.

`pixel_values` runs the model's image processor in two parts. Its geometry (resize, centre crop) is the processor
itself, called without rescaling or normalising, and skipped where a probe shows it is the identity (images already
at its size, no crop). Its arithmetic (rescale, normalise) acts on each pixel alone, so the processor is run once on
the 256 uint8 values of each channel (`pixel_table`) and every image is a lookup in that table: the processor's own
float32 values, to the bit, at the cost of an index. Nothing of the processor's arithmetic is written again here.
"""

import copy
import weakref

import numpy as np
import torch
from PIL import Image as PILImage


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


def image_mode(num_channels: int) -> str:
    """The PIL mode of a `num_channels` model's images: "L" or "RGB"."""
    if num_channels not in (1, 3):
        raise ValueError(f"Images can be converted to 1 or 3 channels, not num_channels={num_channels}.")
    return "RGB" if num_channels == 3 else "L"


def channel_statistics(image_processor, num_channels: int) -> dict:
    """The processor's `image_mean` and `image_std`, one value per channel of a `num_channels` model.

    A 1-channel model with an RGB processor uses its first channel's statistics (what training has always done); a
    single value serves every channel. A processor that does not normalise may carry none: 0.5 then, unused."""

    def per_channel(name: str) -> tuple[float, ...]:
        values = getattr(image_processor, name, None)
        values = tuple(float(value) for value in np.reshape(0.5 if values is None else values, -1))
        if len(values) == 1:
            values = values * num_channels
        if num_channels == 1:
            return values[:1]
        if len(values) != num_channels:
            raise ValueError(
                f"The image processor has {len(values)} normalisation channels ({name}) but the model expects "
                f"{num_channels}."
            )
        return values

    return {"image_mean": per_channel("image_mean"), "image_std": per_channel("image_std")}


# Per processor object (weakly held), per state of its attributes: the tables and geometry probes computed for it.
_CACHE: "weakref.WeakKeyDictionary[object, tuple[dict, dict]]" = weakref.WeakKeyDictionary()


def _same_state(state: dict, processor) -> bool:
    try:
        return bool(state == vars(processor))
    except (TypeError, ValueError):  # attributes that do not compare plainly (arrays): by their text
        return repr(state) == repr(vars(processor))


def _cached(image_processor, key, compute):
    try:
        entry = _CACHE.get(image_processor)
    except TypeError:  # a processor that cannot be held weakly or hashed: computed each time
        return compute()
    if entry is None or not _same_state(entry[0], image_processor):  # its settings changed: start afresh
        entry = (copy.deepcopy(vars(image_processor)), {})
        _CACHE[image_processor] = entry
    if key not in entry[1]:
        entry[1][key] = compute()
    return entry[1][key]


def pixel_table(image_processor, num_channels: int = 3) -> np.ndarray:
    """float32 `[num_channels, 256]`: the processor's `pixel_values` for each uint8 value in each channel, computed
    by the processor itself (without its geometry), once per processor and setting."""

    def compute():
        values = np.broadcast_to(np.arange(256, dtype=np.uint8), (num_channels, 1, 256)).copy()
        table = image_processor(
            values,
            do_resize=False,
            do_center_crop=False,
            input_data_format="channels_first",
            return_tensors="np",
            **channel_statistics(image_processor, num_channels),
        )["pixel_values"][0]
        table = np.ascontiguousarray(np.asarray(table).reshape(num_channels, 256), dtype=np.float32)
        table.flags.writeable = False
        return table

    return _cached(image_processor, ("table", num_channels), compute)


def _processor_geometry(images: list, image_processor) -> np.ndarray:
    """uint8 `[B, H, W, C]`: PIL `images` resized and cropped by the processor, not rescaled or normalised."""
    resized = np.asarray(
        image_processor(images, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"]
    )
    if resized.dtype != np.uint8:  # a backend that resizes in floats: its values rounded as PIL would
        resized = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(resized.transpose(0, 2, 3, 1))


def geometry_is_identity(image_processor, shape: tuple[int, ...]) -> bool:
    """Whether the processor's resize and crop leave uint8 images of `shape` (`[H, W, C]`, C = 1 or 3) unchanged: its
    output size, and a random image at it comes back as it was (PIL resizes an image to its own size by a copy; a
    centre crop or another filter would change it). Probed once per processor, setting and shape."""
    height, width, channels = shape
    if (height, width) != processor_image_size(image_processor):
        return False

    def probe():
        array = np.random.default_rng(0).integers(0, 256, (height, width, channels), dtype=np.uint8)
        image = PILImage.fromarray(array[..., 0] if channels == 1 else array)
        return bool(np.array_equal(_processor_geometry([image], image_processor)[0], array))

    return _cached(image_processor, ("identity", tuple(shape)), probe)


def _to_pil(images, mode: str) -> list[PILImage.Image]:
    """PIL images of `mode` ("L" -> "RGB" copies the channel; "RGB" -> "L" weighs them as PIL does)."""
    converted = []
    for image in images:
        if not isinstance(image, PILImage.Image):
            array = np.asarray(image, dtype=np.uint8)
            image = PILImage.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)
        converted.append(image if image.mode == mode else image.convert(mode))
    return converted


def uint8_batch(images, num_channels: int) -> np.ndarray | None:
    """`images` as one uint8 `[B, H, W, C]` array, C = `num_channels` or 1 (grayscale stays one channel: the table
    fills an RGB model's three from it, as PIL's "L" -> "RGB" does), or `None` when they differ in size or need a
    PIL conversion (colour for a 1-channel model, other PIL modes).

    `images`: a uint8 array `[B, H, W]` or `[B, H, W, C]`, or a sequence of PIL images or uint8 arrays."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(
                f"Expected uint8 images [B, H, W] or [B, H, W, C], got a {images.dtype} array of shape {images.shape}."
            )
        batch = images if images.ndim == 4 else images[..., None]
    else:
        arrays = []
        for image in images:
            if isinstance(image, PILImage.Image):
                if image.mode not in ("L", "RGB"):
                    return None
                image = np.asarray(image)
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                return None
            arrays.append(image.reshape(*image.shape[:2], -1))
        if not arrays or any(array.shape != arrays[0].shape for array in arrays):
            return None
        batch = np.stack(arrays)
    return batch if batch.shape[-1] in (1, num_channels) else None


def model_images(images, image_processor, num_channels: int = 3) -> np.ndarray:
    """uint8 `[B, H, W, C]` at the processor's output size (C = `num_channels`, or 1 for grayscale): `images` (see
    `uint8_batch`) through the processor's geometry alone, skipped where it is the identity. What corruptions act on
    and `pixel_values(..., resize=False)` takes."""
    batch = uint8_batch(images, num_channels)
    if batch is not None and geometry_is_identity(image_processor, batch.shape[1:]):
        return batch
    if len(images) == 0:
        height, width = processor_image_size(image_processor)
        return np.zeros((0, height, width, num_channels), dtype=np.uint8)
    return _processor_geometry(_to_pil(images, image_mode(num_channels)), image_processor)


def pixel_values(
    images, image_processor, num_channels: int = 3, *, resize: bool = True, device: torch.device | str | None = None
) -> torch.Tensor:
    """The processor's float32 `pixel_values` `[B, num_channels, H, W]` of uint8 `images`, to the bit.

    `images`: a uint8 array `[B, H, W]` or `[B, H, W, C]` (C = 1 or 3), or a sequence of PIL images or uint8
    arrays. With `resize` (the default) they first go through the processor's geometry (`model_images`); without,
    they are the model's input size already (training's crops, corrupted evaluation images) and only the
    processor's rescale and normalisation apply, through `pixel_table`. Grayscale fills an RGB model's channels;
    colour becomes grayscale for a 1-channel model as PIL converts it."""
    mode = image_mode(num_channels)
    batch = model_images(images, image_processor, num_channels) if resize else uint8_batch(images, num_channels)
    if batch is None:  # colour for a 1-channel model, or PIL modes other than L and RGB
        arrays = [np.asarray(image) for image in _to_pil(images, mode)]
        if any(array.shape != arrays[0].shape for array in arrays):
            raise ValueError("Images of different sizes cannot be a batch without resizing; pass resize=True.")
        batch = np.stack(arrays).reshape(len(arrays), *arrays[0].shape[:2], -1)
    table = pixel_table(image_processor, num_channels)
    pixels = np.empty((batch.shape[0], num_channels, *batch.shape[1:3]), dtype=np.float32)
    for channel in range(num_channels):
        pixels[:, channel] = table[channel][batch[..., min(channel, batch.shape[-1] - 1)]]
    pixels = torch.from_numpy(pixels)
    return pixels if device is None else pixels.to(device)


__all__ = [
    "channel_statistics",
    "geometry_is_identity",
    "image_mode",
    "model_images",
    "pixel_table",
    "pixel_values",
    "processor_image_size",
    "uint8_batch",
]
