"""Image data for the image classification scripts, decoded with numpy and torch only: an IDX reader (MNIST /
Fashion-MNIST), image datasets over arrays or `datasets` image columns (image folders, Hub datasets; Pillow), a
held-out validation split, and a collator that resizes and normalises with torch ops (no torchvision)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from utils_classification import check_label_column, dataset_label_names, encode_label
from utils_common import check_file, hub_error

logger = logging.getLogger(__name__)

OFFLINE_IMAGE_HINT = (
    "Use local data instead: `--fashion_mnist_dir /usr/share/datasets/fashion-mnist` (Debian package "
    "`dataset-fashion-mnist`), IDX files (`--train_images/--train_labels/--validation_images/--validation_labels`) "
    "or image folders (`--train_dir/--validation_dir`, one sub-folder per class)."
)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "validation_images": "t10k-images-idx3-ubyte",
    "validation_labels": "t10k-labels-idx1-ubyte",
}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzipped or not, into a numpy array."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"IDX file {str(path)!r} does not exist.")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{str(path)!r} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'}).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{str(path)!r} has a truncated IDX header.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{str(path)!r} holds {len(raw) - header} data bytes; its header {list(dims)} needs {expected}."
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def find_fashion_mnist(folder: str | Path) -> dict[str, Path]:
    """The four Fashion-MNIST IDX files (`.gz` or not) in `folder`."""
    folder = Path(folder)
    hint = f"Install them with `apt-get install dataset-fashion-mnist` (folder {FASHION_MNIST_DIR})."
    if not folder.is_dir():
        raise ValueError(f"`--fashion_mnist_dir` {str(folder)!r} is not a folder. {hint}")
    found = {}
    for key, stem in FASHION_MNIST_FILES.items():
        candidates = [folder / f"{stem}.gz", folder / stem]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ValueError(f"`--fashion_mnist_dir` {str(folder)!r} has no {stem}[.gz]. {hint}")
        found[key] = path
    return found


class ArrayImageDataset(torch.utils.data.Dataset):
    """Images held as a uint8 array (N, H, W) or (N, H, W, C) with integer labels; items are CHW uint8 tensors."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, random_flip: bool = False) -> None:
        if images.ndim not in (3, 4) or len(images) != len(labels):
            raise ValueError(f"Expected images (N, H, W[, C]) and N labels, got {images.shape} and {labels.shape}.")
        if images.dtype != np.uint8:
            raise ValueError(f"Expected uint8 images (0-255), got {images.dtype}.")
        tensor = torch.from_numpy(np.ascontiguousarray(images))
        self.images = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.images[index]
        if self.random_flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return {"pixel_values": image, "labels": int(self.labels[index])}

    def select(self, indices: Sequence[int]) -> ArrayImageDataset:
        subset = ArrayImageDataset.__new__(ArrayImageDataset)
        index = torch.as_tensor(list(indices), dtype=torch.long)
        subset.images, subset.labels, subset.random_flip = self.images[index], self.labels[index], self.random_flip
        return subset

    @property
    def num_channels(self) -> int:
        return int(self.images.shape[1])


class HFImageDataset(torch.utils.data.Dataset):
    """A `datasets.Dataset` of PIL images (image folder or Hub) seen as CHW uint8 tensors with label ids."""

    def __init__(
        self, dataset, image_column: str, label_column: str, label2id: dict[str, int], random_flip: bool = False
    ) -> None:
        for column in (image_column, label_column):
            if column not in dataset.column_names:
                argument = "--image_column_name" if column == image_column else "--label_column_name"
                raise ValueError(
                    f"Column {column!r} is not in the data (columns: {dataset.column_names}). Set `{argument}`."
                )
        self.dataset, self.image_column, self.label_column = dataset, image_column, label_column
        self.label2id, self.random_flip = label2id, random_flip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.dataset[int(index)]
        image = example[self.image_column]
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        array = np.asarray(image, dtype=np.uint8)
        tensor = torch.from_numpy(array.copy())
        tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        if self.random_flip and torch.rand(()) < 0.5:
            tensor = tensor.flip(-1)
        label = encode_label(example[self.label_column], self.label2id, len(self.label2id))
        return {"pixel_values": tensor, "labels": label}

    def select(self, indices: Sequence[int]) -> HFImageDataset:
        return HFImageDataset(
            self.dataset.select(list(indices)), self.image_column, self.label_column, self.label2id, self.random_flip
        )

    @property
    def num_channels(self) -> int:
        return int(self[0]["pixel_values"].shape[0]) if len(self) else 3


def require_pillow() -> None:
    """A clear error when Pillow, which decodes image folders and Hub image datasets, is missing."""
    if importlib.util.find_spec("PIL") is None:
        raise ImportError(
            "Image folders and Hub image datasets are decoded with Pillow: `pip install Pillow`. IDX "
            "files (`--fashion_mnist_dir`, `--train_images`) need no extra package."
        )


def load_image_datasets(
    data_args: Any, seed: int, cache_dir: str | None = None, token: str | None = None, need_train: bool = True
) -> tuple[dict[str, torch.utils.data.Dataset], list[str]]:
    """`({"train": ..., "validation": ...}, label_names)` from Fashion-MNIST, IDX files, image folders or the Hub."""
    get = lambda name: getattr(data_args, name, None)  # noqa: E731 - the three scripts share only some arguments
    if get("fashion_mnist_dir") or get("train_images") or get("validation_images"):
        if get("fashion_mnist_dir"):
            paths = find_fashion_mnist(get("fashion_mnist_dir"))
            names = list(FASHION_MNIST_CLASSES)
        else:
            paths = {key: check_file(get(key), f"--{key}") for key in FASHION_MNIST_FILES if get(key)}
            for split in ("train", "validation"):
                if (f"{split}_images" in paths) != (f"{split}_labels" in paths):
                    raise ValueError(f"Pass both `--{split}_images` and `--{split}_labels`.")
            names = None
        splits = {}
        held_out = "validation_images" not in paths  # then the validation images come from the training file
        for split in ("train", "validation"):
            if f"{split}_images" in paths and (need_train or held_out or split == "validation"):
                images, labels = read_idx(paths[f"{split}_images"]), read_idx(paths[f"{split}_labels"])
                if len(images) != len(labels):
                    raise ValueError(f"{len(images)} {split} images but {len(labels)} labels.")
                splits[split] = ArrayImageDataset(images, labels.astype(np.int64), random_flip=False)
        if names is None:
            top = max(int(d.labels.max()) for d in splits.values()) + 1
            names = [str(i) for i in range(top)]
        return _hold_out(splits, get("validation_split_percentage"), seed, need_train), names

    require_pillow()
    from datasets import DatasetDict, load_dataset

    if get("dataset_name"):
        try:
            raw = load_dataset(get("dataset_name"), get("dataset_config_name"), cache_dir=cache_dir, token=token)
        except Exception as error:  # offline, Hub down, unknown name
            raise hub_error(f"dataset {get('dataset_name')!r}", error, OFFLINE_IMAGE_HINT) from error
    elif get("train_dir") or get("validation_dir"):
        files = {}
        for split in ("train", "validation"):
            folder = get(f"{split}_dir")
            if folder is None:
                continue
            if not Path(folder).is_dir():
                raise ValueError(f"`--{split}_dir` {folder!r} is not a folder.")
            files[split] = os.path.join(folder, "**")
        raw = load_dataset("imagefolder", data_files=files, cache_dir=cache_dir)
    else:
        raise ValueError(f"No image data given. {OFFLINE_IMAGE_HINT} Or `--dataset_name` for a Hub dataset.")
    if "validation" not in raw and "test" in raw and get("validation_split_percentage") is None:
        raw = DatasetDict({k: v for k, v in raw.items() if k != "test"} | {"validation": raw["test"]})
    label_column = get("label_column_name") or "label"
    check_label_column(next(iter(raw.values())).column_names, label_column)
    names = dataset_label_names(raw, label_column)
    label2id = {name: i for i, name in enumerate(names)}
    wanted = ("train", "validation") if need_train or "validation" not in raw else ("validation",)
    splits = {
        k: HFImageDataset(v, get("image_column_name") or "image", label_column, label2id)
        for k, v in raw.items()
        if k in wanted
    }
    return _hold_out(splits, get("validation_split_percentage"), seed, need_train), names


def _hold_out(splits: dict, percentage: int | None, seed: int, need_train: bool) -> dict:
    if need_train and "train" not in splits:
        raise ValueError("No training images: pass training data (e.g. `--train_images`/`--train_labels`).")
    if "validation" in splits:
        return splits
    if "train" not in splits:
        raise ValueError("No evaluation images: pass `--validation_images`/`--validation_labels` or another source.")
    percentage = 10 if percentage is None else percentage
    if not 0 < percentage < 100:
        raise ValueError(f"`--validation_split_percentage` must be in (0, 100), got {percentage}.")
    train = splits["train"]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, len(order) * percentage // 100)
    logger.info(f"No validation images: holding out {percentage}% of the training images ({cut}).")
    return {"train": train.select(order[cut:]), "validation": train.select(order[:cut])}


@dataclass
class ImageCollator:
    """Batch CHW uint8 images: match `num_channels`, resize to `size` (bilinear, antialiased), scale to [0, 1] and
    normalise with `mean`/`std`, all with torch ops (no torchvision)."""

    size: tuple[int, int]
    num_channels: int
    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.5,)

    def __post_init__(self) -> None:
        self.mean = _per_channel(self.mean, self.num_channels, "image_mean")
        self.std = _per_channel(self.std, self.num_channels, "image_std")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"`image_std` must be positive, got {list(self.std)}.")

    def transform(self, image: torch.Tensor) -> torch.Tensor:
        image = image.float() / 255.0
        channels = image.shape[0]
        if channels != self.num_channels:
            if channels == 1:
                image = image.expand(self.num_channels, -1, -1)
            elif self.num_channels == 1 and channels >= 3:
                image = (image[:3] * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, keepdim=True)
            else:
                raise ValueError(f"Cannot turn {channels}-channel images into the model's {self.num_channels}.")
        if tuple(image.shape[-2:]) != tuple(self.size):
            image = F.interpolate(
                image[None], size=tuple(self.size), mode="bilinear", align_corners=False, antialias=True
            )[0]
        mean = torch.tensor(self.mean)[:, None, None]
        std = torch.tensor(self.std)[:, None, None]
        return (image - mean) / std

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {"pixel_values": torch.stack([self.transform(f["pixel_values"]) for f in features])}
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
        return batch

    def processor_config(self) -> dict[str, Any]:
        """The same preprocessing as a `preprocessor_config.json` (loadable with `AutoImageProcessor`)."""
        return {
            "image_processor_type": "ViTImageProcessor",
            "do_resize": True,
            "size": {"height": int(self.size[0]), "width": int(self.size[1])},
            "resample": 2,  # bilinear
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [float(m) for m in self.mean],
            "image_std": [float(s) for s in self.std],
        }


def _per_channel(values: Sequence[float], channels: int, name: str) -> list[float]:
    values = [float(v) for v in values]
    if len(values) == 1:
        return values * channels
    if len(values) == 3 and channels == 1:
        return [sum(values) / 3]
    if len(values) != channels:
        raise ValueError(f"`{name}` needs 1 or {channels} values, got {values}.")
    return values


def read_processor_config(folder: str | Path) -> dict[str, Any]:
    """`size` (height, width), `image_mean` and `image_std` from a folder's `preprocessor_config.json`, if any."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    found: dict[str, Any] = {}
    size = data.get("crop_size") or data.get("size")
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            found["size"] = (int(size["height"]), int(size["width"]))
        elif "shortest_edge" in size:
            found["size"] = (int(size["shortest_edge"]),) * 2
    elif isinstance(size, int):
        found["size"] = (size, size)
    if data.get("do_normalize", True) and data.get("image_mean") is not None:
        found["image_mean"], found["image_std"] = data["image_mean"], data["image_std"]
    return found
