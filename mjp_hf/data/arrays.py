"""uint8 image arrays as a `datasets` column: each image its raw pixels (row-major bytes) and its shape.

`datasets` hands a transform an `Array2D` column as nested Python lists (3 ms for a batch of 128 28x28 images, more
than the rest of the transform), but `binary` values as `bytes`: a batch of them is one `np.frombuffer`. The bytes are
the array's own memory, not an image encoding: nothing is compressed, no header is written or parsed.
"""

import numpy as np


def array_image_feature():
    """The `datasets` feature of an array image column: `{"pixels": binary, "shape": [H, W] or [H, W, C]}`."""
    from datasets import List, Value

    return {"pixels": Value("binary"), "shape": List(Value("int32"))}


def array_image_items(images: np.ndarray) -> list[dict]:
    """The column values of uint8 `images` `[n, H, W]` or `[n, H, W, C]`."""
    images = _checked(images)
    shape = list(images.shape[1:])
    return [{"pixels": image.tobytes(), "shape": shape} for image in images]


def array_image_column(images: np.ndarray):
    """The column of uint8 `images` `[n, H, W]` or `[n, H, W, C]` as one Arrow array (for `Dataset.from_dict`),
    built on the images' own buffer: what `array_image_items` gives, without a Python object per image."""
    import pyarrow as pa

    images = _checked(images)
    count, size, shape = len(images), int(np.prod(images.shape[1:])), np.asarray(images.shape[1:], dtype=np.int32)
    offsets = np.arange(0, (count + 1) * size, size, dtype=np.int64)
    pixels = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(images.reshape(-1))]
    ).cast(pa.binary())
    shapes = pa.ListArray.from_arrays(
        pa.array(np.arange(0, (count + 1) * len(shape), len(shape), dtype=np.int32)), pa.array(np.tile(shape, count))
    )
    return pa.StructArray.from_arrays([pixels, shapes], names=["pixels", "shape"])


def _checked(images: np.ndarray) -> np.ndarray:
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"Expected uint8 images [n, H, W] or [n, H, W, C], got {images.dtype} {images.shape}.")
    return images


def is_array_image(item) -> bool:
    return isinstance(item, dict) and "pixels" in item and "shape" in item


def read_array_image(item: dict) -> np.ndarray:
    """The uint8 array of one column value (a read-only view of its bytes)."""
    shape = tuple(int(size) for size in item["shape"])
    if len(shape) not in (2, 3) or len(item["pixels"]) != int(np.prod(shape)):
        raise ValueError(
            f"An array image of shape {list(shape)} holds {len(item['pixels'])} bytes, not {np.prod(shape)}."
        )
    return np.frombuffer(item["pixels"], dtype=np.uint8).reshape(shape)


def read_array_images(items: list) -> np.ndarray | list[np.ndarray]:
    """One uint8 array `[B, H, W(, C)]` of column values of one shape (one copy of the bytes), else a list of arrays."""
    shapes = {tuple(item["shape"]) for item in items}
    if len(shapes) == 1:
        shape = shapes.pop()
        joined = b"".join(item["pixels"] for item in items)
        if len(joined) == len(items) * int(np.prod(shape)):
            return np.frombuffer(joined, dtype=np.uint8).reshape(len(items), *shape)
    return [read_array_image(item) for item in items]


__all__ = [
    "array_image_column",
    "array_image_feature",
    "array_image_items",
    "is_array_image",
    "read_array_image",
    "read_array_images",
]
