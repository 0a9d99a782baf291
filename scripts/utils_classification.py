"""Labels and metrics of the classification scripts (text and image): label names and ids from the data, and the
accuracy/F1 `evaluate` modules scored on arg-max predictions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from metrics import load_metric

CLASSIFICATION_METRICS = ("accuracy", "f1")


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


def check_label_column(columns: Sequence[str], label_column: str) -> None:
    """A clear error when the label column is missing."""
    if label_column not in columns:
        raise ValueError(
            f"Label column {label_column!r} is not in the data (columns: {list(columns)}). Set `--label_column_name`."
        )


def dataset_label_names(dataset_dict: Any, label_column: str) -> list[str]:
    """Label names: the `ClassLabel` names if the column has them, else the sorted values of every split."""
    from datasets import ClassLabel

    feature = next(iter(dataset_dict.values())).features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = []
    for split in dataset_dict.values():
        values.extend(split.unique(label_column))
    return label_names_from(values)


# ---- metrics -------------------------------------------------------------------------------------------------------
def load_metrics(names: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """`evaluate` modules for `names` (Hub first unless offline, else the local copy), and where each came from."""
    unknown = [n for n in names if n not in CLASSIFICATION_METRICS]
    if unknown:
        raise ValueError(f"`--metric` must be among {list(CLASSIFICATION_METRICS)}, got {unknown}.")
    modules, sources = {}, {}
    for name in dict.fromkeys(names):
        modules[name], sources[name] = load_metric(name)
        print(f"Metric {name!r}: {sources[name]}")
    return modules, sources


def f1_average_for(num_labels: int, average: str | None = None) -> str:
    """`average` if given, else `"binary"` for two labels and `"macro"` for more."""
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
