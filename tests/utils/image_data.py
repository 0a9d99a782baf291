"""Tiny image data written to disk for the image scripts: IDX files (the MNIST format) and PNG image folders."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

IDX_TYPE_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write `array` as an IDX file (gzipped when the name ends in `.gz`, or when `compress` says so)."""
    path = Path(path)
    array = np.asarray(array)
    if array.dtype.kind in "iuf" and array.dtype.itemsize > 1:
        array = array.astype(array.dtype.newbyteorder(">"))
    code = IDX_TYPE_CODES[np.dtype(array.dtype)]
    data = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def pattern_images(
    count: int, size: int = 12, num_classes: int = 3, channels: int = 1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W) or (N, H, W, C) whose class is a bright band's position, plus noise; and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, count)
    images = rng.integers(0, 60, (count, size, size)).astype(np.int64)
    band = max(size // num_classes, 1)
    for index, label in enumerate(labels):
        images[index, label * band : (label + 1) * band, :] += 180
    images = np.clip(images, 0, 255).astype(np.uint8)
    if channels > 1:
        images = np.repeat(images[..., None], channels, axis=-1)
    return images, labels.astype(np.uint8)


def write_fashion_mnist_like(
    folder: str | Path, train: int = 48, test: int = 16, size: int = 12, num_classes: int = 3, gz: bool = True
) -> Path:
    """The four Fashion-MNIST IDX files (same names) holding tiny generated images."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, count, seed in (("train", train, 0), ("t10k", test, 1)):
        images, labels = pattern_images(count, size, num_classes, seed=seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return folder


def write_image_folder(
    folder: str | Path,
    count: int = 24,
    size: int = 16,
    num_classes: int = 3,
    seed: int = 0,
    names: tuple[str, ...] = ("circle", "square", "stripe"),
) -> Path:
    """PNG files in one sub-folder per class (RGB), for the `imagefolder` loader. Needs Pillow."""
    from PIL import Image

    folder = Path(folder)
    images, labels = pattern_images(count, size, num_classes, channels=3, seed=seed)
    for index, (image, label) in enumerate(zip(images, labels)):
        target = folder / names[int(label)]
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="RGB").save(target / f"{index:03d}.png")
    return folder
